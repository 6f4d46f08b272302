package e2e

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func listAddrs(t *testing.T, d *daemon) map[string]string {
	t.Helper()
	resp, err := d.client.ListListeners(testContext(t), &listenerdv1.ListListenersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range resp.GetListeners() {
		out[l.GetId()] = l.GetStatus().GetBoundAddress() + " " + l.GetName() + " " + l.GetStatus().GetState().String()
	}
	return out
}

// SIGKILL under load, then a new start on the same state: every listener
// is back with the same id and port.
func TestKillUnderLoadRestoresListeners(t *testing.T) {
	dir := testkit.ShortDir(t)
	d := startDaemonIn(t, dir)
	fixed := strconv.Itoa(freePort(t))
	a := listenJSON(t, d, "--port", fixed, "--mode", "echo", "--name", "fixed")
	b := listenJSON(t, d, "--port", "0", "--max-connections", "5")
	c := listenJSON(t, d, "--port", "0", "--mode", "echo")
	d.mustCtl("close", c.GetId(), "--force") // closed ones stay closed
	before := listAddrs(t, d)
	if len(before) != 2 {
		t.Fatalf("before: %v", before)
	}

	// Load on both listeners while the daemon dies: each loader makes at
	// most 100,000 dials, and stops when told (also if the test fails).
	stop := make(chan struct{})
	var wg sync.WaitGroup
	stopLoad := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLoad()
	var dials atomic.Int64
	for _, addr := range []string{a.GetStatus().GetBoundAddress(), b.GetStatus().GetBoundAddress()} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 100000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				conn, err := net.DialTimeout("tcp", addr, guard)
				if err != nil {
					continue // the daemon is gone
				}
				dials.Add(1)
				_, _ = conn.Write([]byte("load"))
				_ = conn.(*net.TCPConn).SetLinger(0)
				conn.Close()
			}
		}()
	}
	eventually(t, func() bool { return dials.Load() >= 200 }, "200 connections of load")
	d.kill()
	stopLoad()

	d2 := startDaemonIn(t, dir)
	after := listAddrs(t, d2)
	if len(after) != len(before) {
		t.Fatalf("after restart %v, before %v", after, before)
	}
	for id, v := range before {
		if after[id] != v {
			t.Fatalf("listener %s: before %q, after %q", id, v, after[id])
		}
	}
	// And they serve.
	dial(t, a.GetStatus().GetBoundAddress())
}

// A clean restart between two `ctl ls` shows the same table.
func TestRestartKeepsTable(t *testing.T) {
	dir := testkit.ShortDir(t)
	d := startDaemonIn(t, dir)
	listenJSON(t, d, "--port", "0", "--name", "one")
	listenJSON(t, d, "--port", "0", "--mode", "echo", "--max-connections", "3")
	before := d.mustCtl("ls")
	d.stop()
	d2 := startDaemonIn(t, dir)
	if after := d2.mustCtl("ls"); after != before {
		t.Fatalf("ls before restart:\n%s\nafter:\n%s", before, after)
	}
}

// A second daemon on the same socket and state refuses to start and leaves
// the first one serving.
func TestSecondDaemonRefuses(t *testing.T) {
	dir := testkit.ShortDir(t)
	d := startDaemonIn(t, dir)
	l := listenJSON(t, d, "--port", "0")
	for _, args := range [][]string{
		{"--socket", d.socket, "--ephemeral"},                                                      // same socket
		{"--socket", filepath.Join(dir, "other.sock"), "--state-dir", filepath.Join(dir, "state")}, // same state
	} {
		ctx, cancel := context.WithTimeout(context.Background(), guard)
		out, err := exec.CommandContext(ctx, daemonBin, args...).CombinedOutput()
		cancel()
		if err == nil || !strings.Contains(string(out), "listenerd") {
			t.Fatalf("second daemon %v: %v, %s", args, err, out)
		}
	}
	if got := listAddrs(t, d); len(got) != 1 || !strings.HasPrefix(got[l.GetId()], l.GetStatus().GetBoundAddress()) {
		t.Fatalf("first daemon disturbed: %v", got)
	}
}

// A state file cut off mid-write stops the daemon with the file named; it
// never starts empty in silence.
func TestCorruptStateStopsDaemon(t *testing.T) {
	dir := testkit.ShortDir(t)
	d := startDaemonIn(t, dir)
	listenJSON(t, d, "--port", "0", "--name", "keep")
	d.stop()
	path := filepath.Join(dir, "state", "listeners.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data[:len(data)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	out, err := exec.CommandContext(ctx, daemonBin, "--socket", filepath.Join(dir, "run", "listenerd.sock"),
		"--state-dir", filepath.Join(dir, "state")).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte(path)) {
		t.Fatalf("daemon on a cut state file: %v\n%s", err, out)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, data[:len(data)/2]) {
		t.Fatal("the daemon rewrote the corrupt state file")
	}
}

// cpuTicks is the process's user+system time in clock ticks.
func cpuTicks(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+2:]))
	u, _ := strconv.ParseInt(fields[11], 10, 64)
	s, _ := strconv.ParseInt(fields[12], 10, 64)
	return u + s
}

// Out of descriptors, the accept loop backs off instead of spinning, says
// so with accept-error events, and resumes by itself once descriptors free.
func TestAcceptBackoffOnEMFILE(t *testing.T) {
	if _, err := exec.LookPath("prlimit"); err != nil {
		t.Skip("prlimit not installed")
	}
	const limit, clients = 128, 200
	// A reserve of 1 lets the connections take every descriptor, as the
	// reserve (TestDescriptorReserveKeepsTheAPI) otherwise prevents.
	d := startDaemonWrapped(t, testkit.ShortDir(t), []string{"prlimit", "--nofile=" + strconv.Itoa(limit) + ":" + strconv.Itoa(limit)}, "--ephemeral", "--fd-reserve", "1")
	resp, err := d.client.CreateListener(testContext(t), &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{Backlog: ptr(uint32(1024))}})
	if err != nil {
		t.Fatal(err)
	}
	l := resp.GetListener()
	stream, err := d.client.WatchEvents(testContext(t), &listenerdv1.WatchEventsRequest{ListenerIds: []string{l.GetId()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range clients {
		c, err := net.DialTimeout("tcp", l.GetStatus().GetBoundAddress(), guard)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// Wait for two accept-error events: they come at most once a second,
	// so the daemon spends at least that long exhausted between them.
	var errTimes []time.Time
	var ticks []int64
	for len(errTimes) < 2 {
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch: %v\n%s", err, d.stderr.String())
		}
		for _, e := range r.GetEvents() {
			if ae := e.GetAcceptError(); ae != nil {
				if !strings.Contains(ae.GetError(), "too many open files") {
					t.Fatalf("accept error %q", ae.GetError())
				}
				errTimes = append(errTimes, time.Now())
				ticks = append(ticks, cpuTicks(t, d.cmd.Process.Pid))
			}
		}
	}
	wall := errTimes[1].Sub(errTimes[0]).Seconds() * 100 // clock ticks (USER_HZ = 100)
	cpu := float64(ticks[1] - ticks[0])
	t.Logf("exhausted for %.0f ticks, daemon used %.0f ticks of CPU", wall, cpu)
	if cpu > wall/2 {
		t.Fatalf("accept loop spins: %.0f CPU ticks in %.0f wall ticks", cpu, wall)
	}
	// Free the descriptors: the queued connections are accepted, and so is
	// a new one.
	for _, c := range conns {
		_ = c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	conns = nil
	fresh := dial(t, l.GetStatus().GetBoundAddress())
	conns = append(conns, fresh)
	port := uint32(fresh.LocalAddr().(*net.TCPAddr).Port)
	for {
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		for _, e := range r.GetEvents() {
			if o := e.GetConnectionOpened(); o != nil && o.GetTuple().GetRemotePort() == port {
				return
			}
		}
	}
}

func ptr[T any](v T) *T { return &v }

func openFDs(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// After connections come and go and listeners open and close, the
// daemon's open descriptors return to their baseline.
func TestDescriptorsReturnToBaseline(t *testing.T) {
	d := startDaemon(t, "--ephemeral")
	pid := d.cmd.Process.Pid
	// Warm up one listener and connection so lazily opened descriptors
	// (such as the resolver's) count in the baseline.
	warm := listenJSON(t, d, "--port", "0")
	if c, err := net.Dial("tcp", warm.GetStatus().GetBoundAddress()); err == nil {
		c.Close()
	}
	d.mustCtl("close", warm.GetId(), "--force")
	waitGone(t, d, warm.GetId())
	base := openFDs(t, pid)

	var ids []string
	var conns []net.Conn
	for _, mode := range []string{"echo", "discard"} {
		l := listenJSON(t, d, "--port", "0", "--mode", mode)
		ids = append(ids, l.GetId())
		for range 20 {
			conns = append(conns, dial(t, l.GetStatus().GetBoundAddress()))
		}
	}
	if n := openFDs(t, pid); n <= base {
		t.Fatalf("%d descriptors with 40 connections open, baseline %d", n, base)
	}
	for _, c := range conns {
		c.Close()
	}
	for _, id := range ids {
		d.mustCtl("close", id, "--drain", "30s")
		waitGone(t, d, id)
	}
	if n := openFDs(t, pid); n != base {
		t.Fatalf("%d descriptors after everything closed, baseline %d", n, base)
	}
}

// waitGone waits until a closed listener has drained and left the list.
func waitGone(t *testing.T, d *daemon, id string) {
	t.Helper()
	ctx := testContext(t)
	eventually(t, func() bool {
		_, err := d.client.GetListener(ctx, &listenerdv1.GetListenerRequest{Id: id})
		return err != nil
	}, "listener "+id+" to finish closing")
}

// A second SIGTERM exits at once, even while connections drain.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	d := startDaemon(t, "--ephemeral", "--shutdown-timeout", "1h")
	l := listenJSON(t, d, "--port", "0")
	dial(t, l.GetStatus().GetBoundAddress())
	ctx := testContext(t)
	eventually(t, func() bool {
		resp, err := d.client.ListConnections(ctx, &listenerdv1.ListConnectionsRequest{ListenerId: l.GetId()})
		if err != nil {
			t.Fatalf("list connections: %v", err)
		}
		return len(resp.GetConnections()) > 0
	}, "the daemon to hold the connection")
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	eventually(t, func() bool { return strings.Contains(d.stderr.String(), "shutting down") }, "the daemon to begin shutting down")
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(guard):
		t.Fatal("second signal did not end the daemon")
	}
	var ee *exec.ExitError
	if !errors.As(d.err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit after the second signal: %v, want status 1", d.err)
	}
	d.err = nil // expected; stop() must not report it
}
