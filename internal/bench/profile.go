package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"time"
)

// pprofHook is added to the daemon's main package for the profiling build
// only, through go build -overlay in the bench's temporary directory: the
// daemon in the repository has no profiling endpoint.
const pprofHook = `package main

import (
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"runtime"
	"strconv"
)

func init() {
	addr := os.Getenv("LISTENERD_BENCH_PPROF")
	if addr == "" {
		return
	}
	if r, err := strconv.Atoi(os.Getenv("LISTENERD_BENCH_MEMPROFILERATE")); err == nil {
		runtime.MemProfileRate = r
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		panic(err)
	}
	runtime.SetMutexProfileFraction(20)
	fmt.Println("pprof " + ln.Addr().String())
	go http.Serve(ln, nil)
}
`

const pprofEnv = "LISTENERD_BENCH_PPROF=127.0.0.1:0"

// memRateEnv makes the heap profile of case e exact: every allocation is
// sampled.
const memRateEnv = "LISTENERD_BENCH_MEMPROFILERATE=1"

// profileRun profiles the daemon next to the Go baseline under case a
// (CPU, mutex) and case e (heap, goroutines, runtime memory statistics),
// the daemon under g and k, the daemon and the Go stream handler together
// under i, and writes the profiles and their summaries to the --profile
// directory.
func (b *bench) profileRun(ctx context.Context) error {
	dir := b.cfg.profile
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	src := filepath.Join(b.tmp, "zz_bench_pprof.go")
	if err := os.WriteFile(src, []byte(pprofHook), 0o600); err != nil {
		return err
	}
	bin := filepath.Join(b.tmp, "listenerd-pprof")
	b.logf("building the profiling variant of the daemon (go build -overlay, in %s only)", b.tmp)
	overlay := map[string]string{filepath.Join(b.root, "daemon", "zz_bench_pprof.go"): src}
	if err := buildDaemon(ctx, b.root, bin, overlay, b.log); err != nil {
		return err
	}
	fmt.Fprintf(b.out, "profiles in %s (daemon binary for go tool pprof: %s)\n", dir, filepath.Join(dir, "listenerd-pprof"))
	if err := copyFile(bin, filepath.Join(dir, "listenerd-pprof")); err != nil {
		return err
	}
	if err := copyFile(b.self, filepath.Join(dir, "bench")); err != nil {
		return err
	}
	for _, key := range []byte("agk") {
		if b.has(key) {
			if err := b.profileShort(ctx, dir, bin, key); err != nil {
				return err
			}
		}
	}
	if b.has('i') {
		if err := b.profileStream(ctx, dir, bin); err != nil {
			return err
		}
	}
	if b.has('e') {
		if err := b.profileIdle(ctx, dir, bin); err != nil {
			return err
		}
	}
	return nil
}

// profiled is a server with a pprof endpoint.
type profiled struct {
	name, addr, pprof, bin, socket string
	pid                            int
	stop                           func()
}

func (b *bench) startProfiled(ctx context.Context, col, mode, bin, name string, env ...string) (*profiled, error) {
	switch col {
	case colDaemon:
		d, err := startDaemon(ctx, bin, b.tmp, name, append([]string{pprofEnv}, env...), "")
		if err != nil {
			return nil, err
		}
		l, err := d.lineWith(ctx, "pprof ", 30*time.Second)
		if err != nil {
			d.stop()
			return nil, err
		}
		_, addr, err := d.createListener(ctx, echoHandler())
		if err != nil {
			d.stop()
			return nil, err
		}
		return &profiled{name: "daemon", addr: addr, pprof: strings.TrimPrefix(l, "pprof "), bin: bin, pid: d.pid(),
			socket: d.socket, stop: func() { _ = d.stop() }}, nil
	default:
		s, err := startGoServer(ctx, b.self, env, b.log, mode, "--pprof", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		l, err := s.lineWith(ctx, "pprof ", 30*time.Second)
		if err != nil {
			s.closeStdin(10 * time.Second)
			return nil, err
		}
		return &profiled{name: "go", addr: s.addr, pprof: strings.TrimPrefix(l, "pprof "), bin: b.self, pid: s.pid(),
			stop: func() { _ = s.closeStdin(10 * time.Second) }}, nil
	}
}

// profileShort takes a CPU profile of the servers while case a's load
// runs against them, over and over, for the profile's duration: in case a
// the daemon with one watcher and the Go baseline, in case g the daemon
// with g's watchers, in case k the daemon publishing to k's NATS server
// (with no watcher), and this process, which runs that server.
func (b *bench) profileShort(ctx context.Context, dir, bin string, key byte) error {
	cols := []string{colDaemon, colBase}
	var env []string
	switch key {
	case 'g':
		cols = cols[:1]
	case 'k':
		cols, env = cols[:1], b.natsEnv
	}
	for _, col := range cols {
		p, err := b.startProfiled(ctx, col, "echo", bin, "prof-"+string(key), env...)
		if err != nil {
			return err
		}
		err = b.profileShortOne(ctx, dir, p, key)
		p.stop()
		if err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) profileShortOne(ctx context.Context, dir string, p *profiled, key byte) error {
	if p.name == "daemon" && key != 'k' {
		n := 1
		if key == 'g' {
			n = b.sz.watchers
		}
		ws, err := attachWatchers(ctx, p.socket, n, "")
		if err != nil {
			return err
		}
		defer detachWatchers(ws)
	}
	secs := b.sz.profileSeconds
	cpuPath := filepath.Join(dir, fmt.Sprintf("%s-%c.cpu.pprof", p.name, key))
	if key == 'k' {
		// This process runs k's NATS server: its profile is the server's
		// side of publishing (and the bench's own loop, which is idle).
		self, err := os.Create(filepath.Join(dir, "bench-k.cpu.pprof"))
		if err != nil {
			return err
		}
		defer self.Close()
		if err := pprof.StartCPUProfile(self); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			_ = b.pprofTop(ctx, dir, &profiled{name: "bench (NATS server)", bin: b.self}, self.Name(), "k",
				"-top", "-cum", "-nodecount=40")
		}()
	}
	runs, perConn, err := b.profileUnderLoad(ctx, p.addr, []*profiled{p}, []string{cpuPath})
	if err != nil {
		return err
	}
	b.logf("profile %c %s: %d runs of case a's load during the %d s CPU profile, %.0f µs of CPU a connection", key, p.name, runs, secs, perConn[0])
	if p.name == "daemon" {
		path := filepath.Join(dir, fmt.Sprintf("daemon-%c.mutex.pprof", key))
		if err := fetch(ctx, "http://"+p.pprof+"/debug/pprof/mutex", path, time.Minute); err != nil {
			return err
		}
	}
	return b.pprofTop(ctx, dir, p, cpuPath, string(key), "-top", "-cum", "-nodecount=40")
}

// profileUnderLoad takes a CPU profile of each of ps at once, into paths,
// while case a's load (which is also case i's) runs against addr, over and
// over, for the profile's duration. It returns the runs and the CPU of each
// of ps per connection over them, to read the profiles' shares as
// microseconds.
func (b *bench) profileUnderLoad(ctx context.Context, addr string, ps []*profiled, paths []string) (runs int, perConn []float64, err error) {
	secs := b.sz.profileSeconds
	got := make(chan error, len(ps))
	for i, p := range ps {
		go func() {
			got <- fetch(ctx, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", p.pprof, secs), paths[i], time.Duration(secs+60)*time.Second)
		}()
	}
	pids := make([]int, len(ps))
	for i, p := range ps {
		pids[i] = p.pid
	}
	c0 := cpuOf(pids)
	var errs []error
	done := 0
	for runs < 100 && done < len(ps) {
		select {
		case err := <-got:
			errs = append(errs, err)
			done++
			continue
		default:
		}
		if _, err := b.loadgen(ctx, "short", "--addr", addr, "--conns", itoa(b.sz.shortConns),
			"--concurrency", itoa(b.sz.shortConc), "--size", itoa(b.sz.msg)); err != nil {
			errs = append(errs, err)
			break
		}
		runs++
	}
	c1 := cpuOf(pids)
	for ; done < len(ps); done++ {
		errs = append(errs, <-got)
	}
	if err := errors.Join(errs...); err != nil {
		return runs, nil, err
	}
	conns := float64(max(1, runs*b.sz.shortConns))
	for i := range ps {
		perConn = append(perConn, us(c1[i]-c0[i])/conns)
	}
	return runs, perConn, nil
}

// profileStream profiles case i: a daemon with a pprof endpoint, and the
// Go stream handler serving a listener of it with one of its own, under
// case i's load (a's: connect, echo, close), both at once. Where perf is
// installed it then counts both processes' system calls and context
// switches over a run of 4,000 connections.
func (b *bench) profileStream(ctx context.Context, dir, bin string) error {
	d, err := startDaemon(ctx, bin, b.tmp, "prof-i", []string{pprofEnv}, "")
	if err != nil {
		return err
	}
	defer d.stop()
	l, err := d.lineWith(ctx, "pprof ", 30*time.Second)
	if err != nil {
		return err
	}
	dp := &profiled{name: "daemon", pprof: strings.TrimPrefix(l, "pprof "), bin: bin, pid: d.pid(), socket: d.socket}
	// One client connection, as the bench's own handler for case i.
	h, err := b.startHandler(ctx, d, b.sz.streamPer, "--pprof", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("the Go stream handler: %w", err)
	}
	defer func() { _ = h.closeStdin(30 * time.Second) }()
	if l, err = h.lineWith(ctx, "pprof ", 30*time.Second); err != nil {
		return err
	}
	hp := &profiled{name: "handler", addr: h.addr, pprof: strings.TrimPrefix(l, "pprof "), bin: b.self, pid: h.pid()}
	dp.addr = h.addr
	ps := []*profiled{dp, hp}
	paths := []string{filepath.Join(dir, "daemon-i.cpu.pprof"), filepath.Join(dir, "handler-i.cpu.pprof")}
	// The runtime's memory statistics before and after (at the end of the
	// heap profile's text), and the allocations in between.
	stats := func(when string) ([]map[string]int64, error) {
		var out []map[string]int64
		for _, p := range ps {
			for _, f := range []struct{ url, path string }{
				{"/debug/pprof/heap?debug=1", filepath.Join(dir, p.name+"-i.memstats-"+when+".txt")},
				{"/debug/pprof/allocs", filepath.Join(dir, p.name+"-i.allocs-"+when+".pprof")},
			} {
				if err := fetch(ctx, "http://"+p.pprof+f.url, f.path, time.Minute); err != nil {
					return nil, err
				}
			}
			out = append(out, memStats(filepath.Join(dir, p.name+"-i.memstats-"+when+".txt")))
		}
		return out, nil
	}
	ms0, err := stats("before")
	if err != nil {
		return err
	}
	runs, perConn, err := b.profileUnderLoad(ctx, h.addr, ps, paths)
	if err != nil {
		return err
	}
	ms1, err := stats("after")
	if err != nil {
		return err
	}
	conns := float64(max(1, runs*b.sz.shortConns))
	summary := fmt.Sprintf("profile i: %d runs of case i's load (%d connections, %d at a time, handler concurrency %d) during the %d s CPU profiles; per connection over them:\n",
		runs, b.sz.shortConns, b.sz.shortConc, b.sz.streamPer, b.sz.profileSeconds)
	for i, p := range ps {
		d := func(k string) float64 { return float64(ms1[i][k]-ms0[i][k]) / conns }
		summary += fmt.Sprintf("  %s: %.0f µs of CPU, %.0f B and %.0f objects allocated, %.4f GC cycles (a GC every %.0f connections)\n",
			p.name, perConn[i], d("TotalAlloc"), d("Mallocs"), d("NumGC"), 1/max(d("NumGC"), 1/conns))
	}
	if err := b.perfStat(ctx, dir, h.addr, ps, &summary); err != nil {
		b.logf("profile i: perf stat: %v", err)
	}
	fmt.Fprint(b.out, "\n"+summary)
	if err := os.WriteFile(filepath.Join(dir, "i.summary.txt"), []byte(summary), 0o644); err != nil {
		return err
	}
	if err := fetch(ctx, "http://"+dp.pprof+"/debug/pprof/mutex", filepath.Join(dir, "daemon-i.mutex.pprof"), time.Minute); err != nil {
		return err
	}
	for i, p := range ps {
		if err := b.pprofTop(ctx, dir, p, paths[i], "i", "-top", "-cum", "-nodecount=60"); err != nil {
			return err
		}
		flat := strings.TrimSuffix(paths[i], ".pprof") + ".flat.txt"
		if err := b.pprofTo(ctx, p, paths[i], flat, "-top", "-nodecount=60"); err != nil {
			return err
		}
		allocs := filepath.Join(dir, p.name+"-i.allocs")
		if err := b.pprofTo(ctx, p, allocs+"-after.pprof", allocs+".top.txt", "-top", "-cum", "-nodecount=60",
			"-sample_index=alloc_space", "-base", allocs+"-before.pprof"); err != nil {
			return err
		}
	}
	return nil
}

// perfConns is the run of case i's load that perfStat counts over.
const perfConns = 4000

// perfStat counts the system calls (all, and each kind) and the context
// switches of each of ps with perf stat over one run of perfConns
// connections against addr, writes perf's output next to the profiles and
// adds the counts per connection to summary. Without perf it says so.
// perf stat starts with its counters off and turns them on and off when
// told on a pipe (--control), so the count is the run's and nothing else.
func (b *bench) perfStat(ctx context.Context, dir, addr string, ps []*profiled, summary *string) error {
	perf, err := exec.LookPath("perf")
	if err != nil {
		*summary += "perf stat: perf is not on PATH: no counts of system calls and context switches\n"
		return nil
	}
	var ctls []*perfCtl
	defer func() {
		for _, c := range ctls {
			c.stop()
		}
	}()
	for _, p := range ps {
		c, err := startPerfCtl(ctx, perf, filepath.Join(dir, p.name+"-i.perf.csv"), p.pid, b.log)
		if err != nil {
			return err
		}
		ctls = append(ctls, c)
	}
	for _, c := range ctls {
		if err := c.command("enable"); err != nil {
			return err
		}
	}
	pids := make([]int, len(ps))
	for i, p := range ps {
		pids[i] = p.pid
	}
	c0 := cpuOf(pids)
	_, err = b.loadgen(ctx, "short", "--addr", addr, "--conns", itoa(perfConns),
		"--concurrency", itoa(b.sz.shortConc), "--size", itoa(b.sz.msg))
	c1 := cpuOf(pids)
	for _, c := range ctls {
		if derr := c.command("disable"); err == nil {
			err = derr
		}
	}
	if err != nil {
		return err
	}
	for _, c := range ctls {
		c.stop()
	}
	*summary += fmt.Sprintf("perf stat over %d connections, per connection:\n", perfConns)
	for i, p := range ps {
		counts, err := readPerfCSV(ctls[i].out)
		if err != nil {
			return err
		}
		*summary += fmt.Sprintf("  %s: %.0f µs of CPU (slowed by the tracepoints), %.2f context switches, %.2f system calls:%s\n", p.name,
			us(c1[i]-c0[i])/perfConns, counts["context-switches"]/perfConns, counts["raw_syscalls:sys_enter"]/perfConns,
			syscallsPer(counts, perfConns))
	}
	return nil
}

// perfCtl is a perf stat attached to a process, its counters turned on
// and off through --control.
type perfCtl struct {
	cmd      *exec.Cmd
	ctl, ack *os.File
	out      string
	stopped  bool
}

func startPerfCtl(ctx context.Context, perf, out string, pid int, log io.Writer) (*perfCtl, error) {
	ctlR, ctlW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	ackR, ackW, err := os.Pipe()
	if err != nil {
		ctlR.Close()
		ctlW.Close()
		return nil, err
	}
	cmd := exec.CommandContext(ctx, perf, "stat", "-x", ",", "-o", out, "--delay=-1", "--control=fd:3,4",
		"-p", strconv.Itoa(pid), "-e", "context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_*")
	cmd.ExtraFiles = []*os.File{ctlR, ackW} // fds 3 and 4
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	err = cmd.Start()
	ctlR.Close()
	ackW.Close()
	if err != nil {
		ctlW.Close()
		ackR.Close()
		return nil, err
	}
	return &perfCtl{cmd: cmd, ctl: ctlW, ack: ackR, out: out}, nil
}

// command sends perf enable or disable and waits for its ack.
func (c *perfCtl) command(what string) error {
	if _, err := c.ctl.WriteString(what + "\n"); err != nil {
		return fmt.Errorf("perf stat %s: %w", what, err)
	}
	// perf writes "ack\n" with C's terminating NUL after it: the NUL
	// comes first in the next ack.
	_ = c.ack.SetReadDeadline(time.Now().Add(30 * time.Second))
	var got []byte
	b := make([]byte, 1)
	for len(got) < 16 {
		if _, err := c.ack.Read(b); err != nil {
			return fmt.Errorf("perf stat %s: no ack: %q: %w", what, got, err)
		}
		switch b[0] {
		case 0:
		case '\n':
			if string(got) != "ack" {
				return fmt.Errorf("perf stat %s: %q, not ack", what, got)
			}
			return nil
		default:
			got = append(got, b[0])
		}
	}
	return fmt.Errorf("perf stat %s: %q, not ack", what, got)
}

// stop ends perf stat (SIGINT: it writes its counts and exits).
func (c *perfCtl) stop() {
	if c.stopped {
		return
	}
	c.stopped = true
	_ = c.cmd.Process.Signal(os.Interrupt)
	_ = c.cmd.Wait()
	c.ctl.Close()
	c.ack.Close()
}

// readPerfCSV reads perf stat -x , output: count by event; events not
// counted are left out.
func readPerfCSV(path string) (map[string]float64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Split(l, ",")
		if len(f) < 3 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			out[f[2]] = v
		}
	}
	if _, ok := out["raw_syscalls:sys_enter"]; !ok {
		return nil, fmt.Errorf("%s: no count of raw_syscalls:sys_enter", path)
	}
	return out, nil
}

// syscallsPer lists the system calls made at least once in ten
// connections, most first, as " name count" per connection.
func syscallsPer(counts map[string]float64, conns float64) string {
	type sc struct {
		name string
		n    float64
	}
	var all []sc
	for k, v := range counts {
		if name, ok := strings.CutPrefix(k, "syscalls:sys_enter_"); ok && v/conns >= 0.1 {
			all = append(all, sc{name, v / conns})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].n > all[j].n || all[i].n == all[j].n && all[i].name < all[j].name })
	var sb strings.Builder
	for _, c := range all {
		fmt.Fprintf(&sb, " %s %.2f", c.name, c.n)
	}
	return sb.String()
}

// profileIdle holds case e's connections on each server and records its
// heap, its goroutines and the runtime's memory statistics before and
// after, so the growth per connection splits into heap, stacks and the
// rest.
func (b *bench) profileIdle(ctx context.Context, dir, bin string) error {
	for _, col := range []string{colDaemon, colBase} {
		p, err := b.startProfiled(ctx, col, "echo4k", bin, "prof-e", memRateEnv)
		if err != nil {
			return err
		}
		err = b.profileIdleOne(ctx, dir, p)
		p.stop()
		if err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) profileIdleOne(ctx context.Context, dir string, p *profiled) error {
	before := filepath.Join(dir, p.name+"-e.memstats-before.txt")
	after := filepath.Join(dir, p.name+"-e.memstats-after.txt")
	var hookErr error
	h, err := b.holdHook(ctx, p.addr, b.sz.holdConns, []int{p.pid}, func() {
		hookErr = fetch(ctx, "http://"+p.pprof+"/debug/pprof/heap?debug=1", before, time.Minute)
	})
	if err != nil {
		return err
	}
	defer h.release()
	if hookErr != nil {
		return hookErr
	}
	heap := filepath.Join(dir, p.name+"-e.heap.pprof")
	for _, f := range []struct{ url, path string }{
		{"/debug/pprof/heap?debug=1", after},
		{"/debug/pprof/heap?gc=1", heap}, // gc=1: the profile of now, not of the last GC
		{"/debug/pprof/goroutine?debug=1", filepath.Join(dir, p.name+"-e.goroutines.txt")},
	} {
		if err := fetch(ctx, "http://"+p.pprof+f.url, f.path, time.Minute); err != nil {
			return err
		}
	}
	if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", p.pid)); err == nil {
		_ = os.WriteFile(filepath.Join(dir, p.name+"-e.smaps_rollup.txt"), data, 0o644)
	}
	n := float64(b.sz.holdConns)
	ms0, ms1 := memStats(before), memStats(after)
	fmt.Fprintf(b.out, "\nprofile e %s: RSS %d -> %d KiB, %.0f B/conn; runtime.MemStats growth per conn:", p.name, h.rss0[0], h.rss1[0], h.perConn[0])
	for _, k := range []string{"HeapInuse", "Stack", "MSpan", "GCSys", "OtherSys", "Sys"} {
		fmt.Fprintf(b.out, " %s %.0f B", k, float64(ms1[k]-ms0[k])/n)
	}
	fmt.Fprintln(b.out)
	return b.pprofTop(ctx, dir, p, heap, "e", "-top", "-nodecount=20", "-sample_index=inuse_space")
}

// pprofTop writes go tool pprof's summary of a profile next to it and
// prints its head.
func (b *bench) pprofTop(ctx context.Context, dir string, p *profiled, profile, key string, args ...string) error {
	path := strings.TrimSuffix(profile, ".pprof") + ".top.txt"
	if err := b.pprofTo(ctx, p, profile, path, args...); err != nil {
		return err
	}
	out, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	lines := strings.Split(string(out), "\n")
	fmt.Fprintf(b.out, "\nprofile %s %s (%s):\n%s\n", key, p.name, path, strings.Join(lines[:min(len(lines), 22)], "\n"))
	return nil
}

// pprofTo writes go tool pprof's output with args for profile to path.
func (b *bench) pprofTo(ctx context.Context, p *profiled, profile, path string, args ...string) error {
	cmd := exec.CommandContext(ctx, "go", append(append([]string{"tool", "pprof"}, args...), p.bin, profile)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go tool pprof: %v: %s", err, out)
	}
	return os.WriteFile(path, out, 0o644)
}

// memStats reads the "# Name = value" runtime.MemStats lines that the
// heap profile's debug=1 text ends with.
func memStats(path string) map[string]int64 {
	out := map[string]int64{}
	f, err := os.Open(path)
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "# "), " = ")
		if !ok || strings.Contains(name, " ") {
			continue
		}
		val, _, _ = strings.Cut(val, " / ") // "Stack = inuse / sys"
		if v, err := strconv.ParseInt(val, 10, 64); err == nil {
			out[name] = v
		}
	}
	return out
}

func fetch(ctx context.Context, url, path string, timeout time.Duration) error {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func copyFile(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o755)
}
