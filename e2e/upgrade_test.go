package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// The load generator is this test binary run again with loadEnv set:
// loadWorkers goroutines each connect, echo 16 bytes and close, in a loop,
// until its stdin closes; then it prints one loadResult as JSON.
const (
	loadEnv     = "LISTENERD_E2E_LOAD"
	loadSrcEnv  = "LISTENERD_E2E_LOAD_SRC" // source address of its connections
	loadWorkers = 6
	loadProcs   = 4
)

func init() {
	if addr := os.Getenv(loadEnv); addr != "" {
		os.Exit(loadMain(addr, os.Getenv(loadSrcEnv)))
	}
}

// loadResult is what one load generator counted.
type loadResult struct {
	OK, Refused, Reset, Cut, Other int64
	Errors                         []string        // the first few, for the log
	Done                           map[int64]int64 // connections echoed, by 10 ms slot of the wall clock
	MaxMillis                      int64           // slowest connect+echo+close
}

func loadMain(addr, src string) int {
	stop := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	var res loadResult
	var mu sync.Mutex
	res.Done = map[int64]int64{}
	var wg sync.WaitGroup
	var announced sync.Once
	msg := []byte("0123456789abcdef")
	for range loadWorkers {
		wg.Go(func() {
			d := net.Dialer{Timeout: guard, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
			buf := make([]byte, len(msg))
			done := map[int64]int64{}
			var local loadResult
			for {
				select {
				case <-stop:
					mu.Lock()
					res.OK += local.OK
					res.Refused += local.Refused
					res.Reset += local.Reset
					res.Cut += local.Cut
					res.Other += local.Other
					res.MaxMillis = max(res.MaxMillis, local.MaxMillis)
					if len(res.Errors) < 10 {
						res.Errors = append(res.Errors, local.Errors...)
					}
					for k, v := range done {
						res.Done[k] += v
					}
					mu.Unlock()
					return
				default:
				}
				start := time.Now()
				err := echo16(&d, addr, msg, buf)
				switch {
				case err == nil:
					local.OK++
					now := time.Now()
					done[now.UnixMilli()/10]++
					local.MaxMillis = max(local.MaxMillis, now.Sub(start).Milliseconds())
					announced.Do(func() { fmt.Println("ready") })
					continue
				case errors.Is(err, syscall.ECONNREFUSED):
					local.Refused++
				case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
					local.Reset++
				case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
					local.Cut++
				default:
					local.Other++
				}
				if len(local.Errors) < 3 {
					local.Errors = append(local.Errors, err.Error())
				}
			}
		})
	}
	wg.Wait()
	if err := json.NewEncoder(os.Stdout).Encode(&res); err != nil {
		return 1
	}
	return 0
}

// echo16 is one connection of the load: connect, 16 bytes each way, close.
func echo16(d *net.Dialer, addr string, msg, buf []byte) error {
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(guard))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != string(msg) {
		return fmt.Errorf("echo %q", buf)
	}
	return nil
}

// loadGen is one running load generator process.
type loadGen struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func startLoad(t *testing.T, addr string, n int) []*loadGen {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var gens []*loadGen
	for i := range n {
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(), loadEnv+"="+addr, loadSrcEnv+"=127.0.0."+strconv.Itoa(10+i))
		cmd.Stderr = os.Stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		g := &loadGen{cmd: cmd, stdin: in, out: bufio.NewReader(out)}
		gens = append(gens, g)
		t.Cleanup(func() {
			in.Close()
			_ = cmd.Wait()
		})
	}
	for _, g := range gens { // each one has echoed once
		line, err := g.out.ReadString('\n')
		if err != nil || strings.TrimSpace(line) != "ready" {
			t.Fatalf("load generator: %q, %v", line, err)
		}
	}
	return gens
}

// stopLoad stops the generators and adds up what they counted.
func stopLoad(t *testing.T, gens []*loadGen) loadResult {
	t.Helper()
	total := loadResult{Done: map[int64]int64{}}
	for _, g := range gens {
		g.stdin.Close()
	}
	for _, g := range gens {
		var r loadResult
		if err := json.NewDecoder(g.out).Decode(&r); err != nil {
			t.Fatalf("load generator result: %v", err)
		}
		if err := g.cmd.Wait(); err != nil {
			t.Fatalf("load generator: %v", err)
		}
		total.OK += r.OK
		total.Refused += r.Refused
		total.Reset += r.Reset
		total.Cut += r.Cut
		total.Other += r.Other
		total.Errors = append(total.Errors, r.Errors...)
		total.MaxMillis = max(total.MaxMillis, r.MaxMillis)
		for k, v := range r.Done {
			total.Done[k] += v
		}
	}
	return total
}

// rate is the connections a second echoed between from and to.
func (r loadResult) rate(from, to time.Time) (int64, float64) {
	var n int64
	for slot := from.UnixMilli() / 10; slot <= to.UnixMilli()/10; slot++ {
		n += r.Done[slot]
	}
	secs := float64((to.UnixMilli()/10-from.UnixMilli()/10+1)*10) / 1000
	return n, float64(n) / secs
}

// seqWatcher checks what a ctl watch prints: each event's sequence is the
// one after the last, and no connection id opens twice.
type seqWatcher struct {
	mu     sync.Mutex
	first  uint64
	last   uint64
	n      int
	opened map[string]bool
	err    error
	boots  map[string]bool
}

func watchSequences(d *daemon) *seqWatcher {
	s := d.ctlStream("watch", "-o", "json")
	w := &seqWatcher{opened: map[string]bool{}, boots: map[string]bool{}}
	go func() {
		for line := range s.lines {
			var ev listenerdv1.Event
			unmarshalLine(d.t, line, &ev)
			w.mu.Lock()
			seq := ev.GetSequence()
			switch {
			case w.err != nil:
			case w.n == 0:
				w.first = seq
			case seq != w.last+1:
				w.err = fmt.Errorf("sequence %d after %d", seq, w.last)
			}
			w.last = seq
			w.n++
			w.boots[ev.GetBootId()] = true
			if o := ev.GetConnectionOpened(); o != nil && w.err == nil {
				id := o.GetConnectionId()
				if w.opened[id] {
					w.err = fmt.Errorf("connection %s opened twice (seq %d)", id, seq)
				}
				w.opened[id] = true
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *seqWatcher) upTo(seq uint64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err != nil || w.last >= seq
}

// accepted is what the daemon serving the API now says its listener
// accepted.
func accepted(t *testing.T, d *daemon, id string) uint64 {
	t.Helper()
	resp, err := d.client.GetListener(testContext(t), &listenerdv1.GetListenerRequest{Id: id})
	if err != nil {
		return 0 // between two daemons: ask again
	}
	return resp.GetListener().GetStatus().GetAcceptedConnections()
}

// gone reports whether process pid has ended (gone, or a zombie no one
// reaps).
func gone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] == "Z"
}

// stopPid ends a daemon this test did not start itself (the new process
// an upgrade started) with SIGTERM.
func stopPid(t *testing.T, pid int) {
	_ = syscall.Kill(pid, syscall.SIGTERM)
	eventually(t, func() bool { return gone(pid) }, fmt.Sprintf("upgraded daemon %d exits on SIGTERM", pid))
}

// An upgrade under a steady connect load: nobody is refused or reset,
// connections open on the old process finish their echo there, a watcher
// started before reads one gap-free sequence across, the old process
// exits once drained, and the new one serves on.
func TestUpgradeRefusesNobody(t *testing.T) {
	d := startDaemon(t, "--shutdown-timeout", "5m")
	out := d.mustCtl("listen", "--port", "0", "--mode", "echo", "--name", "up", "-o", "json")
	var l listenerdv1.Listener
	unmarshalLine(t, out, &l)
	addr := l.GetStatus().GetBoundAddress()
	w := watchSequences(d)

	var long []*net.TCPConn
	msg := []byte("long connection!")
	for range 10 {
		c := dial(t, addr)
		echoConn(t, c, msg)
		long = append(long, c)
	}
	gens := startLoad(t, addr, loadProcs)
	before := accepted(t, d, "up")
	eventually(t, func() bool { return accepted(t, d, "up") >= before+2000 }, "steady load before the upgrade")

	t0 := time.Now()
	res := d.ctl("upgrade", "-o", "json")
	t1 := time.Now()
	if res.code != 0 {
		t.Fatalf("ctl upgrade: exit %d: %s", res.code, res.stderr)
	}
	var up listenerdv1.UpgradeDaemonResponse
	unmarshalLine(t, res.stdout, &up)
	newPid := int(up.GetPid())
	t.Cleanup(func() { stopPid(t, newPid) })
	if newPid == d.cmd.Process.Pid || up.GetListeners() != 1 || up.GetDrainingConnections() < int64(len(long)) {
		t.Fatalf("upgrade reply %v (old pid %d, %d long connections)", &up, d.cmd.Process.Pid, len(long))
	}
	at := accepted(t, d, "up")
	eventually(t, func() bool { return accepted(t, d, "up") >= at+2000 }, "steady load after the upgrade, on the new process")
	if gone(d.cmd.Process.Pid) {
		t.Fatal("the old process exited with connections open")
	}
	for _, c := range long { // still served by the old process, which drains
		echoConn(t, c, msg)
		c.Close()
	}
	eventually(t, func() bool { return gone(d.cmd.Process.Pid) }, "the old process exits once drained")
	t2 := time.Now()
	eventually(t, func() bool { return accepted(t, d, "up") >= at+4000 }, "load goes on once the old process is gone")
	total := stopLoad(t, gens)

	resp, err := d.client.ListListeners(testContext(t), &listenerdv1.ListListenersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return w.upTo(resp.GetSequence()) }, "the watcher reads up to the head")
	w.mu.Lock()
	werr, first, last, n, boots := w.err, w.first, w.last, w.n, len(w.boots)
	w.mu.Unlock()
	if werr != nil || boots != 1 {
		t.Fatalf("watcher across the upgrade: %v (%d boot ids)", werr, boots)
	}
	if first > up.GetHeadSequence() || last <= up.GetHeadSequence() {
		t.Fatalf("watcher read %d to %d; the upgrade was at %d", first, last, up.GetHeadSequence())
	}

	during, rate := total.rate(t0, t1)
	_, drainRate := total.rate(t1, t2)
	t.Logf("upgrade took %v (ctl upgrade); %d connections echoed during it, %.0f/s; %.0f/s while the old process drained; "+
		"in all %d echoed, %d refused, %d reset, %d cut, %d other errors %v; slowest %d ms; watcher read seq %d-%d (%d events) gap-free, upgrade at seq %d",
		t1.Sub(t0).Round(time.Millisecond), during, rate, drainRate, total.OK, total.Refused, total.Reset, total.Cut, total.Other,
		total.Errors, total.MaxMillis, first, last, n, up.GetHeadSequence())
	if total.Refused+total.Reset+total.Cut+total.Other != 0 {
		t.Fatalf("clients saw %d refused, %d reset, %d cut, %d other: %v", total.Refused, total.Reset, total.Cut, total.Other, total.Errors)
	}
}

// An upgrade to a binary that fails to start: the daemon serves on, under
// load, and says why.
func TestUpgradeFailingBinaryKeepsServing(t *testing.T) {
	d := startDaemon(t)
	out := d.mustCtl("listen", "--port", "0", "--mode", "echo", "--name", "up", "-o", "json")
	var l listenerdv1.Listener
	unmarshalLine(t, out, &l)
	addr := l.GetStatus().GetBoundAddress()
	bad := filepath.Join(testkit.ShortDir(t), "listenerd-broken")
	if err := os.WriteFile(bad, []byte("#!/bin/sh\necho 'broken build' >&2\nexit 3\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	gens := startLoad(t, addr, loadProcs)
	before := accepted(t, d, "up")
	eventually(t, func() bool { return accepted(t, d, "up") >= before+1000 }, "steady load before the upgrade")

	res := d.ctl("upgrade", "--binary", bad)
	if res.code == 0 || !strings.Contains(res.stderr, "exit status 3") {
		t.Fatalf("ctl upgrade to a broken binary: exit %d\nstdout: %s\nstderr: %s", res.code, res.stdout, res.stderr)
	}
	at := accepted(t, d, "up")
	eventually(t, func() bool { return accepted(t, d, "up") >= at+1000 }, "load goes on after the failed upgrade")
	total := stopLoad(t, gens)
	t.Logf("failed upgrade said: %s; clients: %d echoed, %d refused, %d reset, %d cut, %d other %v",
		strings.TrimSpace(res.stderr), total.OK, total.Refused, total.Reset, total.Cut, total.Other, total.Errors)
	if total.Refused+total.Reset+total.Cut+total.Other != 0 {
		t.Fatalf("clients saw %d refused, %d reset, %d cut, %d other: %v", total.Refused, total.Reset, total.Cut, total.Other, total.Errors)
	}
	if gone(d.cmd.Process.Pid) {
		t.Fatal("the daemon exited")
	}
	// It still takes changes: the table was given back.
	d.mustCtl("listen", "--port", "0", "--mode", "echo")
	echoConn(t, dial(t, addr), []byte("still the old one"))
}

func echoConn(t *testing.T, c net.Conn, msg []byte) {
	t.Helper()
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != string(msg) {
		t.Fatalf("echo: %q, %v", buf, err)
	}
}
