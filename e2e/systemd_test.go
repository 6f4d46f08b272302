package e2e

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/listenerd/listenerd/internal/testkit"
)

// Socket activation: systemd-socket-activate binds the API socket and
// starts the daemon on the first connection (the health check's) with it
// as $LISTEN_FDS; the daemon serves its API there, binding nothing, and
// leaves the socket file, which is the service manager's, at exit.
func TestSystemdSocketActivation(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate not installed")
	}
	dir := testkit.ShortDir(t)
	if err := os.Mkdir(filepath.Join(dir, "run"), 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "run", "listenerd.sock")
	d := startDaemonWrapped(t, dir, []string{activate, "-l", sock}, "--ephemeral")
	if !strings.Contains(d.stderr.String(), "API socket passed in by the service manager") {
		t.Fatalf("the daemon did not serve on the passed socket:\n%s", d.stderr.String())
	}
	ctl := func(args ...string) result {
		r := runBin(t, ctlBin, nil, "", append([]string{"--socket", sock}, args...)...)
		if r.code != 0 {
			t.Fatalf("ctl %v: exit %d: %s", args, r.code, r.stderr)
		}
		return r
	}
	ctl("listen", "--port", "0", "--name", "activated")
	if out := ctl("ls").stdout; !strings.Contains(out, "activated") {
		t.Fatalf("ctl ls printed %q", out)
	}
	d.stop()
	if fi, err := os.Lstat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("the passed socket's file is gone after the daemon stopped: %v", err)
	}
}

// awaitNotify reads datagrams until one says state, and returns it;
// the descriptors of the others are closed.
func awaitNotify(t *testing.T, ch <-chan testkit.NotifyMsg, state string) testkit.NotifyMsg {
	t.Helper()
	return awaitNotifyMatch(t, ch, state, func(m testkit.NotifyMsg) bool { return m.State == state })
}

// awaitNotifyLine reads datagrams until one has the line want, and returns
// its state.
func awaitNotifyLine(t *testing.T, ch <-chan testkit.NotifyMsg, want string) string {
	t.Helper()
	return awaitNotifyMatch(t, ch, want, func(m testkit.NotifyMsg) bool {
		return slices.Contains(strings.Split(m.State, "\n"), want)
	}).State
}

// awaitNotifyMatch reads datagrams until match says yes to one, and
// returns it; the descriptors of the others are closed.
func awaitNotifyMatch(t *testing.T, ch <-chan testkit.NotifyMsg, what string, match func(testkit.NotifyMsg) bool) testkit.NotifyMsg {
	t.Helper()
	timeout := time.After(guard)
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatalf("notify socket closed before %q", what)
			}
			if match(m) {
				return m
			}
			for _, f := range m.Files {
				f.Close()
			}
		case <-timeout:
			t.Fatalf("no %q on the notify socket", what)
		}
	}
}

// A restart under systemd with the descriptor store: the daemon stores
// each listener's socket (FDSTORE=1, FDNAME=listener-<id>); played here,
// the store keeps it while no daemon runs, so a connection made then waits
// in its backlog; the next daemon, given it back in $LISTEN_FDS, restores
// the listener on that very socket and serves the waiting connection. A
// stored socket no saved listener has is removed from the store.
func TestFDStoreRestartKeepsSocket(t *testing.T) {
	notify, ch := testkit.PlayNotify(t)
	dir := testkit.ShortDir(t)
	withNotify := func(c *exec.Cmd) { c.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify) }
	d1 := startDaemonPrepared(t, dir, nil, withNotify)
	l := listenJSON(t, d1, "--port", "0", "--mode", "echo", "--name", "kept")
	id, addr := l.GetId(), l.GetStatus().GetBoundAddress()
	m := awaitNotify(t, ch, "FDSTORE=1\nFDNAME=listener-"+id)
	if len(m.Files) != 1 {
		t.Fatalf("FDSTORE carried %d descriptors, want 1", len(m.Files))
	}
	stored := m.Files[0]
	defer stored.Close()
	d1.stop()

	// No daemon runs: the stored socket still listens, and queues this.
	c := dial(t, addr)
	if _, err := c.Write([]byte("queued")); err != nil {
		t.Fatal(err)
	}
	// A stale entry, as a listener closed while its daemon was down.
	stale, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	staleF, err := stale.(*net.TCPListener).File()
	stale.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer staleF.Close()

	// As systemd passes the store back: fds from 3, named, $LISTEN_PID
	// the daemon's own (the shell execs it).
	wrap := []string{"sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=listener-` + id + `:listener-gone exec "$@"`, "sh"}
	d2 := startDaemonPrepared(t, dir, wrap, func(c *exec.Cmd) {
		withNotify(c)
		c.ExtraFiles = []*os.File{stored, staleF}
	})
	stored.Close()
	staleF.Close()
	if !strings.Contains(d2.stderr.String(), "listener restored on a passed socket") {
		t.Fatalf("the listener was not restored on the passed socket:\n%s", d2.stderr.String())
	}
	buf := make([]byte, len("queued"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "queued" {
		t.Fatalf("the connection queued while no daemon ran: read %q, %v", buf, err)
	}
	c.Close()
	awaitNotify(t, ch, "FDSTOREREMOVE=1\nFDNAME=listener-gone")
	m = awaitNotify(t, ch, "FDSTORE=1\nFDNAME=listener-"+id)
	for _, f := range m.Files {
		f.Close()
	}
	out := d2.mustCtl("ls", "-o", "wide")
	if !strings.Contains(out, addr) || !strings.Contains(out, "listening") {
		t.Fatalf("after the restart, ls printed:\n%s", out)
	}
	// Closing the listener takes it out of the store.
	d2.mustCtl("close", id)
	awaitNotify(t, ch, "FDSTOREREMOVE=1\nFDNAME=listener-"+id)
}

// Under systemd's notify protocol with the watchdog on, the real daemon
// says READY=1 once it serves, pings WATCHDOG=1 while it is healthy, and
// says STOPPING=1 when it is told to stop.
func TestSystemdNotifyAndWatchdog(t *testing.T) {
	notify, ch := testkit.PlayNotify(t)
	// $WATCHDOG_PID is the daemon's own: the shell execs it.
	wrap := []string{"sh", "-c", `WATCHDOG_PID=$$ exec "$@"`, "sh"}
	d := startDaemonPrepared(t, testkit.ShortDir(t), wrap, func(c *exec.Cmd) {
		c.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify, "WATCHDOG_USEC=200000")
	}, "--ephemeral")
	if ready := awaitNotifyLine(t, ch, "READY=1"); !strings.Contains(ready, "STATUS=") {
		t.Errorf("READY=1 came without a STATUS= line: %q", ready)
	}
	for range 3 {
		awaitNotifyLine(t, ch, "WATCHDOG=1")
	}
	d.stop()
	awaitNotifyLine(t, ch, "STOPPING=1")
}
