package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The forwarders users pick instead of listenerd run as peers of case c
// when they are installed: socat, haproxy and toxiproxy, each as its users
// run it, forwarding to the same echo upstream. Node's forwarder is the
// node column. None of them is a target; they show where listenerd stands.

// forwardPeer is one kind of forwarder: the flag that names its binary and
// how to start it.
type forwardPeer struct {
	col, bin    string   // column and flag, binary looked up on PATH
	versionArgs []string // what makes bin print its version
	start       func(ctx context.Context, b *bench, bin, upstream string) (*server, error)
	// noHalfClose: the peer ends both directions when its client
	// half-closes, losing what is in flight, so its load does not.
	noHalfClose bool
}

var forwardPeers = []forwardPeer{
	{col: "socat", bin: "socat", versionArgs: []string{"-V"}, start: startSocat},
	{col: "haproxy", bin: "haproxy", versionArgs: []string{"-v"}, start: startHAProxy},
	{col: "toxiproxy", bin: "toxiproxy-server", versionArgs: []string{"-version"}, start: startToxiproxy, noHalfClose: true},
}

// forwardPeerOf returns the forwardPeer of a column, nil for the others.
func forwardPeerOf(col string) *forwardPeer {
	for i := range forwardPeers {
		if forwardPeers[i].col == col {
			return &forwardPeers[i]
		}
	}
	return nil
}

// lookPeer resolves a peer's flag: "off" is none, "" looks bin up on PATH,
// anything else is the binary.
func lookPeer(flagValue, bin string) string {
	switch flagValue {
	case "off":
		return ""
	case "":
		p, _ := exec.LookPath(bin)
		return p
	default:
		return flagValue
	}
}

// freePort returns a port that was free on 127.0.0.1 a moment ago, for
// servers that cannot report the port they bound. Another process may take
// it in between; the start then fails with the port named.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitDial waits until addr accepts a connection, for servers that print
// nothing when ready: at most 500 tries, 20 ms apart, and never past
// timeout or the end of p.
func waitDial(ctx context.Context, p *proc, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for range 500 {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s not accepting within %v: %v", p.name, addr, timeout, err)
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s: %s not accepting", p.name, addr)
}

// startPortServer starts bin with the arguments args makes for a free
// port on 127.0.0.1 (addr is host:port), and waits until it accepts there.
func startPortServer(ctx context.Context, b *bench, name, bin string, args func(addr string, port int) ([]string, error)) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	a, err := args(addr, port)
	if err != nil {
		return nil, err
	}
	p, err := startProc(name, nil, b.log, bin, a...)
	if err != nil {
		return nil, err
	}
	if err := waitDial(ctx, p, addr, 30*time.Second); err != nil {
		_ = p.stop(time.Second)
		return nil, err
	}
	return &server{proc: p, addr: addr}, nil
}

// startSocat runs socat as a forwarder: a process forked per connection.
func startSocat(ctx context.Context, b *bench, bin, upstream string) (*server, error) {
	return startPortServer(ctx, b, "socat", bin, func(_ string, port int) ([]string, error) {
		return []string{fmt.Sprintf("TCP4-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork,backlog=4096", port), "TCP4:" + upstream}, nil
	})
}

// startHAProxy runs haproxy in TCP mode with a minimal configuration, at
// its fastest: splicing both ways (option splice-request and
// splice-response; splice-auto left it at about 400 MiB/s here, and no
// splice is the default), one thread per CPU.
func startHAProxy(ctx context.Context, b *bench, bin, upstream string) (*server, error) {
	return startPortServer(ctx, b, "haproxy", bin, func(addr string, _ int) ([]string, error) {
		cfg := fmt.Sprintf(`global
    maxconn 4096
defaults
    mode tcp
    option splice-request
    option splice-response
    timeout connect 10s
    timeout client 2m
    timeout server 2m
listen forward
    bind %s
    server upstream %s
`, addr, upstream)
		path := filepath.Join(b.tmp, "haproxy.cfg")
		return []string{"-db", "-f", path}, os.WriteFile(path, []byte(cfg), 0o600)
	})
}

// startToxiproxy runs toxiproxy-server and creates one proxy with no
// toxics through its HTTP API.
func startToxiproxy(ctx context.Context, b *bench, bin, upstream string) (*server, error) {
	s, err := startPortServer(ctx, b, "toxiproxy", bin, func(_ string, port int) ([]string, error) {
		return []string{"-host", "127.0.0.1", "-port", strconv.Itoa(port)}, nil
	})
	if err != nil {
		return nil, err
	}
	api := s.addr
	fail := func(err error) (*server, error) {
		_ = s.stop(time.Second)
		return nil, fmt.Errorf("toxiproxy: %w", err)
	}
	body, _ := json.Marshal(map[string]any{"name": "forward", "listen": "127.0.0.1:0", "upstream": upstream, "enabled": true})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+api+"/proxies", bytes.NewReader(body))
	if err != nil {
		return fail(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return fail(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return fail(fmt.Errorf("create proxy: %s: %s", resp.Status, strings.TrimSpace(string(out))))
	}
	var created struct {
		Listen string `json:"listen"`
	}
	if err := json.Unmarshal(out, &created); err != nil || created.Listen == "" {
		return fail(fmt.Errorf("create proxy: no listen address in %q: %v", out, err))
	}
	s.addr = created.Listen
	return s, nil
}

// peerVersion is the first line with "version" in it that a binary prints
// for its version flag.
func peerVersion(bin string, args ...string) string {
	out, _ := exec.Command(bin, args...).CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(strings.ToLower(line), "version") {
			return strings.TrimSpace(line)
		}
	}
	return "version unknown"
}
