package ctl

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/listenerd/listenerd/internal/testkit"
)

// bgCtl is a ctl command running in the background (a watch).
type bgCtl struct {
	stdout, stderr testkit.Buffer
	cancel         context.CancelFunc
	done           chan int // its exit code
}

// startCtl runs ctl with args (-v added, so that the watch says on stderr
// when the daemon has registered it) and returns once it has: what
// happens next is in its stream. It resumes through a daemon's absence
// for up to the guard.
func startCtl(t *testing.T, sock string, args ...string) *bgCtl {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b := &bgCtl{cancel: cancel, done: make(chan int, 1)}
	watching := make(chan struct{})
	b.stderr.OnOutput("ctl: watching", func() { close(watching) })
	app := newApp(&b.stdout, &b.stderr)
	// Retries for as long as the guard, however slow the machine is to
	// bring a restarted daemon back.
	app.retry = retryPolicy{initial: time.Millisecond, max: 20 * time.Millisecond, giveUp: testkit.Guard}
	app.stdin = strings.NewReader("")
	go func() { b.done <- app.run(ctx, append([]string{"--socket", sock}, append(args, "-v")...)) }()
	t.Cleanup(func() {
		cancel()
		<-b.done
	})
	select {
	case <-watching:
	case code := <-b.done:
		b.done <- code
		t.Fatalf("ctl %v ended before watching: exit %d, stderr %q", args, code, b.stderr.String())
	case <-time.After(testkit.Guard):
		t.Fatalf("ctl %v never watched: stderr %q", args, b.stderr.String())
	}
	return b
}

// waitOut waits until stdout holds s.
func (b *bgCtl) waitOut(t *testing.T, s string) {
	t.Helper()
	seen := make(chan struct{})
	b.stdout.OnOutput(s, func() { close(seen) })
	select {
	case <-seen:
	case <-time.After(testkit.Guard):
		t.Fatalf("no %q in stdout %q (stderr %q)", s, b.stdout.String(), b.stderr.String())
	}
}

// exit waits for the command to end by itself and returns its exit code.
func (b *bgCtl) exit(t *testing.T) int {
	t.Helper()
	select {
	case code := <-b.done:
		b.done <- code
		return code
	case <-time.After(testkit.Guard):
		t.Fatalf("ctl did not end: stdout %q, stderr %q", b.stdout.String(), b.stderr.String())
	}
	return 0
}

// interrupt stops it as Ctrl-C does and returns its exit code.
func (b *bgCtl) interrupt(t *testing.T) int {
	t.Helper()
	b.cancel()
	return b.exit(t)
}

// listenID opens a listener with args and returns its id.
func listenID(t *testing.T, sock string, args ...string) string {
	t.Helper()
	r := runCtl(t, sock, append([]string{"listen", "--port", "0"}, args...)...)
	if r.code != ExitOK {
		t.Fatalf("listen %v: exit %d, %q", args, r.code, r.stderr)
	}
	// listening on 127.0.0.1:PORT (id ln-…, name …)
	i := strings.Index(r.stdout, "id ")
	return strings.TrimRight(strings.Fields(r.stdout[i+3:])[0], ",)")
}

// touch connects to the listener of id and closes, so that it has a
// connection_opened event.
func touch(t *testing.T, sock, id string) {
	t.Helper()
	r := runCtl(t, sock, "get", id)
	i := strings.Index(r.stdout, "address:")
	addr := strings.Fields(r.stdout[i+len("address:"):])[0]
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
}

// A watch by name follows the name to the next listener that takes it.
func TestWatchByNameFollowsTheName(t *testing.T) {
	d := startDaemon(t)
	first := listenID(t, d.sock, "--name", "web")
	other := listenID(t, d.sock, "--name", "other")
	w := startCtl(t, d.sock, "watch", "web")

	if r := runCtl(t, d.sock, "close", "web", "--force", "--wait"); r.code != ExitOK {
		t.Fatalf("close: exit %d, %q", r.code, r.stderr)
	}
	w.waitOut(t, first+" listener_closed")
	second := listenID(t, d.sock, "--name", "web")
	w.waitOut(t, second+" listener_started")
	touch(t, d.sock, other) // not printed: not the name's
	touch(t, d.sock, second)
	w.waitOut(t, second+" connection_opened")
	if code := w.interrupt(t); code != ExitOK {
		t.Errorf("exit %d", code)
	}
	if out := w.stdout.String(); strings.Contains(out, other) {
		t.Errorf("printed another listener's events:\n%s", out)
	}

	// --kind applies to the name's listeners too; the listener_started
	// that follows the name is not printed unless asked for.
	w = startCtl(t, d.sock, "watch", "web", "--kind", "connection_opened")
	runCtl(t, d.sock, "close", "web", "--force")
	third := listenID(t, d.sock, "--name", "web")
	touch(t, d.sock, third)
	w.waitOut(t, third+" connection_opened")
	w.interrupt(t)
	if out := w.stdout.String(); strings.Count(out, "\n") != 1 {
		t.Errorf("--kind connection_opened printed:\n%s", out)
	}
}

// A watch of one listener by id ends (exit 0) once it has closed, after
// printing its listener_closed event; --keep watches on.
func TestWatchByIDEndsWhenItCloses(t *testing.T) {
	d := startDaemon(t)
	id := listenID(t, d.sock)
	kept := listenID(t, d.sock)
	w := startCtl(t, d.sock, "watch", id, "--kind", "connection_opened")
	k := startCtl(t, d.sock, "watch", kept, "--keep")
	touch(t, d.sock, id)
	w.waitOut(t, id+" connection_opened")
	runCtl(t, d.sock, "close", id, "--force")
	runCtl(t, d.sock, "close", kept, "--force")
	if code := w.exit(t); code != ExitOK {
		t.Errorf("watch by id: exit %d, stderr %q", code, w.stderr.String())
	}
	// --kind did not ask for listener_closed: it ended the watch unprinted.
	if out := w.stdout.String(); strings.Contains(out, "listener_closed") || !strings.Contains(out, "connection_opened") {
		t.Errorf("watch by id --kind connection_opened printed:\n%s", out)
	}
	k.waitOut(t, kept+" listener_closed")
	if code := k.interrupt(t); code != ExitOK {
		t.Errorf("watch --keep: exit %d", code)
	}

	// Without --kind, the close event is printed, and it is the last line.
	id = listenID(t, d.sock)
	w = startCtl(t, d.sock, "watch", id)
	runCtl(t, d.sock, "close", id)
	if code := w.exit(t); code != ExitOK || !strings.HasSuffix(w.stdout.String(), " listener_closed drained=0 destroyed=0\n") {
		t.Errorf("watch by id: exit %d, stdout %q", code, w.stdout.String())
	}
}

// ctl watch without --since goes on across a daemon restart: one line on
// stderr says events were missed, and the new daemon's events follow.
func TestWatchAcrossRestart(t *testing.T) {
	d := startDaemon(t)
	w := startCtl(t, d.sock, "watch", "-o", "json")
	id := listenID(t, d.sock)
	w.waitOut(t, `"listenerId":"`+id+`"`)

	d.stop()
	d2 := serveDaemon(t, d.sock)
	t.Cleanup(d2.stop)
	// The gap line, then the line saying the watch of the new daemon is
	// open: a listener created before that would not be watched.
	gap := make(chan struct{})
	w.stderr.OnOutput("were missed; watching the new daemon's events from now\nctl: watching from now", func() { close(gap) })
	select {
	case <-gap:
	case <-time.After(testkit.Guard):
		t.Fatalf("no gap line: stderr %q", w.stderr.String())
	}
	id2 := listenID(t, d2.sock)
	w.waitOut(t, `"listenerId":"`+id2+`"`)
	if code := w.interrupt(t); code != ExitOK {
		t.Errorf("exit %d, stderr %q", code, w.stderr.String())
	}
	// stdout is events only, one JSON object a line.
	for _, l := range strings.Split(strings.TrimSpace(w.stdout.String()), "\n") {
		if !strings.HasPrefix(l, `{"sequence":`) {
			t.Errorf("not an event line: %q", l)
		}
	}
	if n := strings.Count(w.stderr.String(), "listenerd restarted"); n != 1 {
		t.Errorf("%d restart lines in stderr %q", n, w.stderr.String())
	}

	// With --since, a restart ends the watch: it cannot give what it was
	// asked for.
	s := startCtl(t, d2.sock, "watch", "--since", "0")
	d2.stop()
	d3 := serveDaemon(t, d.sock)
	t.Cleanup(d3.stop)
	if code := s.exit(t); code != ExitError || !strings.Contains(s.stderr.String(), "restarted") {
		t.Errorf("watch --since across a restart: exit %d, stderr %q", code, s.stderr.String())
	}
}
