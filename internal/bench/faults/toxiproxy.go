package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"time"
)

// toxiproxy is a toxiproxy server this command started, driven over its
// HTTP API on 127.0.0.1.
type toxiproxy struct {
	cmd     *exec.Cmd
	api     string // http://127.0.0.1:PORT
	version string
}

// startToxiproxy runs the server at path on a free port of 127.0.0.1 and
// waits, at most 30 s, until its API answers.
func startToxiproxy(path string) (*toxiproxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0") // a free port: toxiproxy's API takes no port 0
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	cmd := exec.Command(path, "-host", "127.0.0.1", "-port", strconv.Itoa(port))
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("-toxiproxy: %w", err)
	}
	t := &toxiproxy{cmd: cmd, api: fmt.Sprintf("http://127.0.0.1:%d", port)}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(t.api + "/version")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				var v struct {
					Version string `json:"version"`
				}
				if json.Unmarshal(b, &v) == nil && v.Version != "" {
					t.version = v.Version
				} else {
					t.version = string(bytes.TrimSpace(b))
				}
				return t, nil
			}
		}
		select {
		case err := <-exited:
			return nil, fmt.Errorf("-toxiproxy: %s exited before its API answered: %v", path, err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.stop()
			return nil, fmt.Errorf("-toxiproxy: its API did not answer on %s in 30 s", t.api)
		}
	}
}

// stop ends the server this command started.
func (t *toxiproxy) stop() {
	_ = t.cmd.Process.Kill()
}

func (t *toxiproxy) post(path string, body any, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	resp, err := http.Post(t.api+path, "application/json", bytes.NewReader(b))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("toxiproxy POST %s: %s: %s", path, resp.Status, bytes.TrimSpace(rb))
	}
	if out != nil {
		return json.Unmarshal(rb, out)
	}
	return nil
}

// proxy makes a proxy named name on a free port of 127.0.0.1 to upstream
// and returns its address.
func (t *toxiproxy) proxy(name, upstream string) (string, error) {
	var p struct {
		Listen string `json:"listen"`
	}
	err := t.post("/proxies", map[string]any{"name": name, "listen": "127.0.0.1:0", "upstream": upstream, "enabled": true}, &p)
	if err != nil {
		return "", err
	}
	if _, port, err := net.SplitHostPort(p.Listen); err != nil || port == "0" {
		return "", fmt.Errorf("toxiproxy proxy %s listens on %q", name, p.Listen)
	}
	return p.Listen, nil
}

// toxic adds a toxic of type typ on the proxy's downstream (upstream to
// client, the way listenerd's out direction goes), on every connection.
func (t *toxiproxy) toxic(proxy, typ string, attrs map[string]int64) error {
	return t.post("/proxies/"+proxy+"/toxics", map[string]any{"name": typ, "type": typ, "stream": "downstream",
		"toxicity": 1.0, "attributes": attrs}, nil)
}
