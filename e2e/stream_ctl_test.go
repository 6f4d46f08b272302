package e2e

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// The stream handler's ctl side through the real binaries: ctl listen
// --mode stream, ctl serve --exec and ctl attach serving raw TCP clients,
// a connection no handler takes, and a ctl serve killed mid-connection.

// sctl is a long-running ctl (serve, attach) with its output kept.
type sctl struct {
	t              *testing.T
	cmd            *exec.Cmd
	stdout, stderr *testkit.Buffer
	done           chan struct{}
	err            error
}

// startSctl runs ctl with args against the daemon, stdin given (none when
// empty). At cleanup it is interrupted, and killed if it does not end.
func (d *daemon) startSctl(stdin string, args ...string) *sctl {
	d.t.Helper()
	s := &sctl{t: d.t, cmd: exec.Command(ctlBin, args...), stdout: &testkit.Buffer{}, stderr: &testkit.Buffer{}, done: make(chan struct{})}
	s.cmd.Env = append(os.Environ(), "LISTENERD_SOCKET="+d.socket)
	if stdin != "" {
		s.cmd.Stdin = strings.NewReader(stdin)
	}
	s.cmd.Stdout, s.cmd.Stderr = s.stdout, s.stderr
	if err := s.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	go func() { s.err = s.cmd.Wait(); close(s.done) }()
	d.t.Cleanup(func() {
		_ = s.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-s.done:
		case <-time.After(guard):
			_ = s.cmd.Process.Kill()
			<-s.done
		}
		if d.t.Failed() {
			d.t.Logf("ctl %v stderr:\n%s", args, s.stderr.String())
		}
	})
	return s
}

// waitStderr waits until ctl's stderr holds text.
func (s *sctl) waitStderr(text string) {
	s.t.Helper()
	if !awaitOutput(s.t, s.stderr, s.done, text) {
		s.t.Fatalf("ctl exited (%v) before saying %q; stderr:\n%s", s.err, text, s.stderr.String())
	}
}

// exit waits for ctl to end by itself and returns its exit code.
func (s *sctl) exit() int {
	s.t.Helper()
	select {
	case <-s.done:
	case <-time.After(guard):
		s.t.Fatalf("ctl did not end; stderr:\n%s", s.stderr.String())
	}
	var ee *exec.ExitError
	if errors.As(s.err, &ee) {
		return ee.ExitCode()
	}
	if s.err != nil {
		s.t.Fatal(s.err)
	}
	return 0
}

// streamListener opens a stream listener with ctl listen and returns its
// id and address.
func streamListener(t *testing.T, d *daemon, args ...string) (id, addr string) {
	t.Helper()
	l := listenJSON(t, d, append([]string{"--port", "0", "--mode", "stream"}, args...)...)
	if l.GetSpec().GetHandler().GetStream() == nil {
		t.Fatalf("created with handler %v", l.GetSpec().GetHandler())
	}
	return l.GetId(), l.GetStatus().GetBoundAddress()
}

// serveReady starts ctl serve on the listener and waits until it is
// attached.
func serveReady(d *daemon, id string, args ...string) *sctl {
	d.t.Helper()
	s := d.startSctl("", append([]string{"serve", id}, args...)...)
	s.waitStderr("as handler h-")
	return s
}

// ctl listen --mode stream makes a stream listener; get and ls show it.
func TestCtlListenModeStream(t *testing.T) {
	d := startDaemon(t)
	l := listenJSON(t, d, "--port", "0", "--claim-timeout", "200ms", "--name", "svc")
	if ct := l.GetSpec().GetHandler().GetStream().GetClaimTimeout(); ct.AsDuration() != 200*time.Millisecond {
		t.Fatalf("--claim-timeout 200ms made handler %v", l.GetSpec().GetHandler())
	}
	if out := d.mustCtl("get", "svc"); !strings.Contains(out, "mode:             stream (claim timeout 200ms)\n") {
		t.Errorf("get:\n%s", out)
	}
	rows := table(d.mustCtl("ls"))
	if len(rows) != 2 || rows[1][len(rows[1])-1] != "stream" {
		t.Errorf("ls: %q", rows)
	}
	id, _ := streamListener(t, d)
	if out := d.mustCtl("get", id); !strings.Contains(out, "mode:             stream\n") {
		t.Errorf("get of a stream listener with the default claim timeout:\n%s", out)
	}
	r := d.ctl("listen", "--port", "0", "--mode", "echo", "--claim-timeout", "1s")
	if r.code != 2 || !strings.Contains(r.stderr, `--claim-timeout needs --mode stream, not "echo"`) {
		t.Errorf("--claim-timeout with echo: exit %d, stderr %q", r.code, r.stderr)
	}
}

// ctl serve --exec cat answers raw TCP clients, two at once: each gets
// back all it sent, both ways at once, and after its own end (CloseWrite)
// the echo's end (EOF).
func TestCtlServeExecCat(t *testing.T) {
	d := startDaemon(t)
	id, addr := streamListener(t, d, "--name", "cat")
	serveReady(d, "cat", "--exec", "cat")
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := dial(t, addr)
			want := bytes.Repeat([]byte("listenerd "+strconv.Itoa(i)+"\n"), 40000) // ~500 KB: more than the windows
			sent := make(chan error, 1)
			go func() {
				_, err := c.Write(want)
				if err == nil {
					err = c.CloseWrite()
				}
				sent <- err
			}()
			got, err := io.ReadAll(c) // to the echo's EOF
			if err != nil {
				t.Errorf("client %d: read: %v", i, err)
				return
			}
			if err := <-sent; err != nil {
				t.Errorf("client %d: write: %v", i, err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("client %d: got %d bytes back, want %d", i, len(got), len(want))
			}
		}()
	}
	wg.Wait()
	if out := d.mustCtl("get", id, "-o", "json"); !strings.Contains(out, `"acceptedConnections":"2"`) {
		t.Errorf("get: %s", out)
	}
}

// Through the API (--no-handover), the command's end reaches the peer
// while the peer can still send: the command closes its stdout after a
// line, then counts what the peer sends until the peer's end.
func TestCtlServeCommandEndsFirst(t *testing.T) {
	d := startDaemon(t)
	id, addr := streamListener(t, d)
	s := serveReady(d, id, "--no-handover", "--exec", "sh", "-c", `echo hi; exec 1>&-; echo "counted $(wc -c) bytes" >&2`)
	c := dial(t, addr)
	got, err := io.ReadAll(c) // "hi", then the command's end
	if err != nil || string(got) != "hi\n" {
		t.Fatalf("read %q, %v", got, err)
	}
	if _, err := c.Write(bytes.Repeat([]byte("x"), 5000)); err != nil {
		t.Fatalf("the peer could not send after the command's end: %v", err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	s.waitStderr("counted 5000 bytes")
}

// With the daemon on this host, the command's stdin and stdout are the
// connection's socket itself, and its connection closes HANDLER_CLOSED
// once it has exited; with --no-handover they are pipes, and the
// connection ends as a stream handler's does.
func TestCtlServeHandsTheSocketOver(t *testing.T) {
	d := startDaemon(t)
	id, addr := streamListener(t, d)
	list, err := d.client.ListListeners(testContext(t), &listenerdv1.ListListenersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	w := d.ctlStream("watch", "-o", "json", "--since", strconv.FormatUint(list.GetSequence(), 10), id)
	kind := `if [ -S /dev/stdin ] && [ -S /dev/stdout ]; then echo socket; else echo pipe; fi`
	for _, tc := range []struct {
		flags  []string
		want   string
		reason listenerdv1.CloseReason
	}{
		{nil, "socket\n", listenerdv1.CloseReason_CLOSE_REASON_HANDLER_CLOSED},
		{[]string{"--no-handover"}, "pipe\n", listenerdv1.CloseReason_CLOSE_REASON_UNSPECIFIED},
	} {
		s := serveReady(d, id, append(tc.flags, "--exec", "sh", "-c", kind)...)
		c := dial(t, addr)
		got, err := io.ReadAll(c)
		if err != nil || string(got) != tc.want {
			t.Fatalf("serve %v: the client read %q, %v; want %q", tc.flags, got, err, tc.want)
		}
		c.Close()
		for {
			var e listenerdv1.Event
			unmarshalLine(t, w.next(), &e)
			if cl := e.GetConnectionClosed(); cl != nil {
				if tc.reason != listenerdv1.CloseReason_CLOSE_REASON_UNSPECIFIED && cl.GetReason() != tc.reason {
					t.Errorf("serve %v: closed %v, want %v", tc.flags, cl.GetReason(), tc.reason)
				}
				break
			}
		}
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		if code := s.exit(); code != 0 {
			t.Fatalf("serve %v after SIGTERM: exit %d; stderr:\n%s", tc.flags, code, s.stderr.String())
		}
	}
}

// The command gets the five-tuple in its environment, as tcpserver names
// it, and the connection's id.
func TestCtlServeExecEnvironment(t *testing.T) {
	d := startDaemon(t)
	id, addr := streamListener(t, d)
	serveReady(d, id, "--exec", "sh", "-c", "echo $TCPREMOTEPORT $TCPREMOTEIP $TCPLOCALIP $TCPLOCALPORT $PROTO $LISTENERD_CONNECTION_ID")
	c := dial(t, addr)
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	_, lport, _ := net.SplitHostPort(addr)
	want := port(c) + " 127.0.0.1 127.0.0.1 " + lport + " TCP " + id + ".1\n"
	if string(got) != want {
		t.Fatalf("the command printed %q, want %q", got, want)
	}
}

// ctl attach serves one connection on stdin and stdout, and exits 0 when
// it has closed.
func TestCtlAttachStdin(t *testing.T) {
	d := startDaemon(t)
	id, addr := streamListener(t, d)
	a := d.startSctl("from attach\n", "attach", id)
	a.waitStderr("waiting for a connection")
	c := dial(t, addr)
	if _, err := c.Write([]byte("from the client\n")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "from attach\n" {
		t.Fatalf("the client read %q, %v", got, err)
	}
	if code := a.exit(); code != 0 {
		t.Fatalf("attach: exit %d; stderr:\n%s", code, a.stderr.String())
	}
	if out := a.stdout.String(); out != "from the client\n" {
		t.Errorf("attach printed %q", out)
	}
	if e := a.stderr.String(); !strings.Contains(e, "connection "+id+".1 from 127.0.0.1:"+port(c)) ||
		!strings.Contains(e, "connection "+id+".1 closed (peer closed, in 16 B, out 12 B") {
		t.Errorf("attach said:\n%s", e)
	}
}

// A connection that no handler takes waits for the claim timeout, then
// closes NO_HANDLER, as ctl watch -o json shows.
func TestCtlStreamNoHandler(t *testing.T) {
	d := startDaemon(t)
	id, addr := streamListener(t, d, "--claim-timeout", "200ms")
	list, err := d.client.ListListeners(testContext(t), &listenerdv1.ListListenersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	w := d.ctlStream("watch", "-o", "json", "--since", strconv.FormatUint(list.GetSequence(), 10), id)
	c := dial(t, addr)
	if _, err := c.Read(make([]byte, 1)); !isEnd(err) {
		t.Fatalf("a connection no handler took read %v, want its end", err)
	}
	for {
		var e listenerdv1.Event
		unmarshalLine(t, w.next(), &e)
		if cl := e.GetConnectionClosed(); cl != nil {
			if cl.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_NO_HANDLER || cl.GetTuple().GetRemotePort() != uint32(c.LocalAddr().(*net.TCPAddr).Port) {
				t.Fatalf("closed %v, want NO_HANDLER for the client", cl)
			}
			return
		}
	}
}

// Killing ctl serve mid-connection resets the sockets it held; the
// listener stays, and the next ctl serve serves it.
func TestCtlServeKilledResetsItsSockets(t *testing.T) {
	d := startDaemon(t)
	id, addr := streamListener(t, d)
	s := serveReady(d, id, "--exec", "cat")
	c := dialEcho(t, addr, "ping")
	if err := s.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-s.done
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the client of a killed ctl serve read %v, want ECONNRESET", err)
	}
	if out := d.mustCtl("get", id); !strings.Contains(out, "state:            listening\n") {
		t.Fatalf("the listener after its handler died:\n%s", out)
	}
	serveReady(d, id, "--exec", "cat")
	dialEcho(t, addr, "pong")
}

// ctl attach --keep serves one connection after another; Ctrl-C ends it
// with 0. With stdin empty, each client gets our end at once and can
// still send.
func TestCtlAttachKeep(t *testing.T) {
	d := startDaemon(t)
	id, addr := streamListener(t, d)
	a := d.startSctl("", "attach", id, "--keep")
	a.waitStderr("waiting for a connection")
	for i, msg := range []string{"first\n", "second\n"} {
		c := dial(t, addr)
		if got, err := io.ReadAll(c); err != nil || len(got) != 0 {
			t.Fatalf("client %d read %q, %v; want our end at once", i, got, err)
		}
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		a.waitStderr("connection " + id + "." + strconv.Itoa(i+1) + " closed (peer closed")
	}
	_ = a.cmd.Process.Signal(syscall.SIGINT)
	if code := a.exit(); code != 0 {
		t.Fatalf("attach --keep after Ctrl-C: exit %d", code)
	}
	if out := a.stdout.String(); out != "first\nsecond\n" {
		t.Errorf("attach --keep printed %q", out)
	}
}

// SIGTERM stops ctl serve taking connections; it lets a running command
// finish and exits 0. With --grace 0s, the command is killed and its
// connection reset.
func TestCtlServeStops(t *testing.T) {
	d := startDaemon(t)
	id, addr := streamListener(t, d)
	s := serveReady(d, id, "-v", "--grace", "1m", "--exec", "sh", "-c", "read line; echo got $line")
	c := dial(t, addr)
	s.waitStderr("connection " + id + ".1 from 127.0.0.1:" + port(c) + ": sh runs as pid")
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	s.waitStderr("stopped taking connections; waiting up to 1m for 1 running command")
	if _, err := c.Write([]byte("bye\n")); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(c); err != nil || string(got) != "got bye\n" {
		t.Fatalf("read %q, %v", got, err)
	}
	c.Close()
	if code := s.exit(); code != 0 {
		t.Fatalf("serve after SIGTERM: exit %d", code)
	}

	s = serveReady(d, id, "-v", "--grace", "0s", "--exec", "sleep", "600")
	c = dial(t, addr)
	s.waitStderr("connection " + id + ".2 from 127.0.0.1:" + port(c) + ": sleep runs as pid")
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	if code := s.exit(); code != 0 {
		t.Fatalf("serve after SIGTERM with --grace 0s: exit %d", code)
	}
	if !strings.Contains(s.stderr.String(), "killed 1 command still running after --grace 0s") {
		t.Errorf("serve said:\n%s", s.stderr.String())
	}
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the client of a killed command read %v, want ECONNRESET", err)
	}
}
