package e2e

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/listenerd/listenerd/internal/testkit"
)

var httpLine = regexp.MustCompile(`listenerd serving HTTP on (http://\S+)/`)

// httpURL is the HTTP API's base URL the daemon printed (before it served
// the API socket, so it is there once the daemon is healthy).
func httpURL(t *testing.T, d *daemon) string {
	t.Helper()
	m := httpLine.FindStringSubmatch(d.stderr.String())
	if m == nil {
		t.Fatalf("no HTTP line in the daemon's output:\n%s", d.stderr.String())
	}
	return m[1]
}

// writeToken writes a fresh API token to dir/token (mode 0600) as the
// README makes one (32 random bytes in base64, so with '+', '/' and '=' as
// a browser's address and a shell must carry them) and returns it and the
// file; --http refuses to serve without one (or a client CA).
func writeToken(t *testing.T, dir string) (token, file string) {
	t.Helper()
	b := make([]byte, 32)
	_, _ = rand.Read(b)     // crypto/rand.Read never fails
	b[0], b[1] = 0xfb, 0xff // "+/..." always, not by chance
	token, file = base64.StdEncoding.EncodeToString(b), filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return token, file
}

// startWebDaemon starts a daemon in dir serving the HTTP API on loopback
// with a token of its own; it returns the daemon and the token.
func startWebDaemon(t *testing.T, dir string) (*daemon, string) {
	t.Helper()
	token, file := writeToken(t, dir)
	d := startDaemonIn(t, dir, "--http", "127.0.0.1:0", "--token-file", file)
	if strings.Contains(d.stderr.String(), token) {
		t.Fatalf("the daemon's output shows the token:\n%s", d.stderr.String())
	}
	return d, token
}

// call sends one request (a body as JSON) with token as its bearer token
// (none when "") and decodes the JSON answer.
func call(t *testing.T, cl *http.Client, token, method, url, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(testContext(t), method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	return resp.StatusCode, decode(t, resp.Body)
}

func decode(t *testing.T, r io.Reader) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.NewDecoder(r).Decode(&m); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	return m
}

// listenerOf is the "listener" object of a reply.
func listenerOf(t *testing.T, m map[string]any) map[string]any {
	t.Helper()
	l, ok := m["listener"].(map[string]any)
	if !ok {
		t.Fatalf("no listener in %v", m)
	}
	return l
}

// TestHTTPAPI drives the real daemon's --http with net/http and curl:
// create, list, close, each with the token (refused without it); and its
// event stream ends cleanly on SIGTERM.
func TestHTTPAPI(t *testing.T) {
	d, token := startWebDaemon(t, testkit.ShortDir(t))
	base := httpURL(t, d)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	cl := &http.Client{Transport: tr}

	t.Run("net/http", func(t *testing.T) {
		code, m := call(t, cl, token, "POST", base+"/v1/listeners", `{"name":"web","spec":{"port":0,"handler":{"echo":{}}}}`)
		if code != http.StatusOK {
			t.Fatalf("create: %d %v", code, m)
		}
		addr := listenerOf(t, m)["status"].(map[string]any)["boundAddress"].(string)
		c := dial(t, addr)
		if _, err := c.Write([]byte("hi")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 2)); err != nil {
			t.Fatal(err)
		}
		code, m = call(t, cl, token, "GET", base+"/v1/listeners", "")
		if ls, _ := m["listeners"].([]any); code != http.StatusOK || len(ls) != 1 {
			t.Fatalf("list: %d %v", code, m)
		}
		code, m = call(t, cl, token, "DELETE", base+"/v1/listeners/web?force=true", "")
		if code != http.StatusOK || listenerOf(t, m)["name"] != "web" {
			t.Fatalf("close: %d %v", code, m)
		}
		if code, m = call(t, cl, token, "GET", base+"/v1/listeners/nope", ""); code != http.StatusNotFound || m["code"] != float64(5) {
			t.Fatalf("get an unknown id: %d %v", code, m)
		}
		for _, tok := range []string{"", "wrong-" + token} {
			if code, m = call(t, cl, tok, "POST", base+"/v1/listeners", `{"spec":{"port":0}}`); code != http.StatusUnauthorized || m["code"] != float64(16) {
				t.Fatalf("create with token %q: %d %v", tok, code, m)
			}
		}
	})

	t.Run("curl", func(t *testing.T) {
		curl, err := exec.LookPath("curl")
		if err != nil {
			t.Skip("curl is not on PATH")
		}
		// As the README shows: the token file read by the shell.
		auth := "Authorization: Bearer " + token
		run := func(args ...string) map[string]any {
			t.Helper()
			out, err := exec.CommandContext(testContext(t), curl, append([]string{"-sS", "--fail-with-body", "-H", auth}, args...)...).Output()
			if err != nil {
				t.Fatalf("curl %v: %v\n%s", args, err, out)
			}
			return decode(t, strings.NewReader(string(out)))
		}
		l := listenerOf(t, run("-X", "POST", "-H", "Content-Type: application/json",
			"-d", `{"name":"curled","spec":{"port":0}}`, base+"/v1/listeners"))
		if l["name"] != "curled" {
			t.Fatalf("create: %v", l)
		}
		found := false
		for _, x := range run(base + "/v1/listeners")["listeners"].([]any) {
			found = found || x.(map[string]any)["name"] == "curled"
		}
		if !found {
			t.Fatal("list: curled is not there")
		}
		if l := listenerOf(t, run("-X", "DELETE", base+"/v1/listeners/curled")); l["name"] != "curled" {
			t.Fatalf("close: %v", l)
		}
		// A form post, as a web page could send across sites, is refused.
		out, err := exec.CommandContext(testContext(t), curl, "-s", "-o", "/dev/null", "-w", "%{http_code}",
			"-H", auth, "-d", "name=x", base+"/v1/listeners").Output()
		if err != nil || string(out) != "415" {
			t.Fatalf("form post: %q %v", out, err)
		}
		// Without the token: 401.
		out, err = exec.CommandContext(testContext(t), curl, "-s", "-o", "/dev/null", "-w", "%{http_code}",
			base+"/v1/listeners").Output()
		if err != nil || string(out) != "401" {
			t.Fatalf("without the token: %q %v", out, err)
		}
	})

	t.Run("events end on SIGTERM", func(t *testing.T) {
		req, err := http.NewRequestWithContext(testContext(t), "GET", base+"/v1/events", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("GET /v1/events: %d %v", resp.StatusCode, resp.Header)
		}
		r := bufio.NewReader(resp.Body)
		if line, err := r.ReadString('\n'); err != nil || line != "event: hello\n" {
			t.Fatalf("first line %q (%v)", line, err)
		}
		d.stop() // exit 0 is checked
		rest, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("the stream did not end cleanly: %v", err)
		}
		if !strings.Contains(string(rest), "event: status\ndata: {\"code\":14") {
			t.Fatalf("the stream ended without its status: %q", rest)
		}
	})
}

// TestHTTPUpgrade: POST /v1/daemon:upgrade starts the new process, which
// takes the HTTP socket over: the same address answers, with the same
// token required, once the old process is gone.
func TestHTTPUpgrade(t *testing.T) {
	d, token := startWebDaemon(t, testkit.ShortDir(t))
	base := httpURL(t, d)
	cl := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	code, m := call(t, cl, token, "POST", base+"/v1/daemon:upgrade", "{}")
	if code != http.StatusOK {
		t.Fatalf("upgrade: %d %v", code, m)
	}
	pid, err := strconv.Atoi(m["pid"].(string))
	if err != nil || pid == d.cmd.Process.Pid {
		t.Fatalf("upgrade reply %v (old pid %d)", m, d.cmd.Process.Pid)
	}
	t.Cleanup(func() { stopPid(t, pid) })
	boot := m["bootId"]
	eventually(t, func() bool { return gone(d.cmd.Process.Pid) }, "the old process exits")
	// Port 0 was picked once: only the handed-over socket answers here.
	code, m = call(t, cl, token, "GET", base+"/v1/status", "")
	if st, _ := m["status"].(map[string]any); code != http.StatusOK || st["bootId"] != boot || boot == "" {
		t.Fatalf("status after the upgrade: %d %v (the upgrade said boot %v)", code, m, boot)
	}
	if code, m = call(t, cl, "", "GET", base+"/v1/status", ""); code != http.StatusUnauthorized {
		t.Fatalf("status after the upgrade without the token: %d %v", code, m)
	}
}
