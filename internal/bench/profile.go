package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
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
// (CPU, mutex) and case e (heap, goroutines, runtime memory statistics), and
// writes the profiles and their summaries to the --profile directory.
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
	got := make(chan error, 1)
	go func() {
		got <- fetch(ctx, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", p.pprof, secs), cpuPath, time.Duration(secs+60)*time.Second)
	}()
	var runs int
	var ferr error
loop:
	for runs = 0; runs < 100; runs++ {
		select {
		case ferr = <-got:
			break loop
		default:
		}
		if _, err := b.loadgen(ctx, "short", "--addr", p.addr, "--conns", itoa(b.sz.shortConns),
			"--concurrency", itoa(b.sz.shortConc), "--size", itoa(b.sz.msg)); err != nil {
			<-got
			return err
		}
	}
	if runs == 100 {
		ferr = <-got
	}
	if ferr != nil {
		return ferr
	}
	b.logf("profile %c %s: %d runs of case a's load during the %d s CPU profile", key, p.name, runs, secs)
	if p.name == "daemon" {
		path := filepath.Join(dir, fmt.Sprintf("daemon-%c.mutex.pprof", key))
		if err := fetch(ctx, "http://"+p.pprof+"/debug/pprof/mutex", path, time.Minute); err != nil {
			return err
		}
	}
	return b.pprofTop(ctx, dir, p, cpuPath, string(key), "-top", "-cum", "-nodecount=40")
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
	cmd := exec.CommandContext(ctx, "go", append(append([]string{"tool", "pprof"}, args...), p.bin, profile)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go tool pprof: %v: %s", err, out)
	}
	path := strings.TrimSuffix(profile, ".pprof") + ".top.txt"
	if err := os.WriteFile(path, out, 0o644); err != nil {
		return err
	}
	lines := strings.Split(string(out), "\n")
	fmt.Fprintf(b.out, "\nprofile %s %s (%s):\n%s\n", key, p.name, path, strings.Join(lines[:min(len(lines), 22)], "\n"))
	return nil
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
