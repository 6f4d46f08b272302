package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// Scripts: ctl's JSON read by other programs, and ctl watch across a
// daemon restart.

// checkJSONTool passes out through python3 -m json.tool, which reads one
// JSON document and fails on anything more, and looks for want in its
// indented output. Skipped (the check, not the test) without python3.
func checkJSONTool(t *testing.T, out, want string) {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Log("python3 is not on PATH: json.tool check skipped")
		return
	}
	r := runBinIn(t, py, out, "-m", "json.tool")
	if r.code != 0 {
		t.Fatalf("python3 -m json.tool: exit %d: %s\ninput: %q", r.code, r.stderr, out)
	}
	if !strings.Contains(r.stdout, want) {
		t.Errorf("python3 -m json.tool: no %q in\n%s", want, r.stdout)
	}
}

// runBinIn is runBin with stdin.
func runBinIn(t *testing.T, bin, stdin string, args ...string) result {
	t.Helper()
	return runBin(t, bin, nil, stdin, args...)
}

// waitErr waits until the stream's stderr holds want.
func (s *stream) waitErr(want string) {
	s.t.Helper()
	if !awaitOutput(s.t, s.errb, s.done, want) {
		s.t.Fatalf("ctl ended before %q on stderr: %v\nstderr: %s", want, s.err, s.errb.String())
	}
}

// awaitOutput waits until b holds want (true), or done is closed first
// (false); the test fails when neither happens within the guard.
func awaitOutput(t *testing.T, b *testkit.Buffer, done <-chan struct{}, want string) bool {
	t.Helper()
	seen := make(chan struct{})
	b.OnOutput(want, func() { close(seen) })
	select {
	case <-seen:
		return true
	case <-done:
		return false
	case <-time.After(guard):
		t.Fatalf("no %q in:\n%s", want, b.String())
	}
	return false
}

// nextWith returns the next line holding want, failing the test if the
// stream ends first.
func (s *stream) nextWith(want string) string {
	s.t.Helper()
	for {
		if l := s.next(); strings.Contains(l, want) {
			return l
		}
	}
}

// ctl watch goes on across a restart of the real daemon (SIGTERM, then a
// new one on the same socket and state directory): one line on stderr
// says events were missed, stdout stays one JSON event a line, and the new
// daemon's events follow.
func TestWatchAcrossDaemonRestart(t *testing.T) {
	dir := testkit.ShortDir(t)
	d := startDaemonIn(t, dir)
	w := d.ctlStream("watch", "-o", "json", "-v")
	w.waitErr("ctl: watching from now")
	before := createEcho(t, d, "before")
	w.nextWith(`"listenerId":"` + before + `"`)

	d.stop()
	d2 := startDaemonIn(t, dir)
	w.waitErr("were missed")
	after := createEcho(t, d2, "after")
	line := w.nextWith(`"listenerId":"` + after + `"`)
	if !strings.HasPrefix(line, `{"sequence":`) || !strings.Contains(line, `"listenerStarted"`) {
		t.Errorf("new daemon's event: %q", line)
	}
	if err := w.interrupt(); err != nil {
		t.Errorf("ctl watch: %v\nstderr: %s", err, w.errb.String())
	}
	if n := strings.Count(w.errb.String(), "listenerd restarted"); n != 1 {
		t.Errorf("%d restart lines on stderr:\n%s", n, w.errb.String())
	}
}

// createEcho opens an echo listener named name on an ephemeral port and
// returns its id.
func createEcho(t *testing.T, d *daemon, name string) string {
	t.Helper()
	var l listenerdv1.Listener
	unmarshalLine(t, strings.TrimSpace(d.mustCtl("listen", "--port", "0", "--mode", "echo", "--name", name, "-o", "json")), &l)
	return l.GetId()
}
