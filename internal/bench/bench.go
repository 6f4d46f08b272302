package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Columns of the table: the daemon, the baseline of the case, Node's peer.
const (
	colDaemon = "listenerd"
	colBase   = "baseline"
	colNode   = "node"
)

// bench is one run: the processes under test and what they measured.
type bench struct {
	cfg      config
	sz       sizes
	out, log io.Writer
	failed   bool

	tmp, root, self, daemonBin, nodeBin string
	peerBins                            map[string]string // c's forwardPeers by column; "" when not installed
	built                               string            // what the daemon was built from

	d                      *daemonProc // the long-lived daemon (a, b, c, d, f, g)
	echoID, echoAddr       string      // its echo listener
	fwdAddr                string      // its forward listener (c)
	goEcho, upstream, goFw *server     // bare Go servers; upstream is c's echo upstream
	bareGRPC               *server     // f: a bare grpc-go health server; addr is its socket
	saving                 *daemonProc // f: a daemon that saves its state, as by default
	node                   *server
	handler                *server            // h, i: the Go stream handler serving a listener of d (--floor: the relay)
	floorEcho              *server            // h, i with --floor: the relay's echo end
	natsD                  *daemonProc        // k: a daemon publishing to NATS (--nats)
	natsAddr               string             // its echo listener
	natsEnv                []string           // the environment that points a daemon at k's NATS server
	forwarders             map[string]*server // c's peers by column: node, socat, haproxy, toxiproxy

	metrics  map[string]*metric
	cleanups []func()
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, format+"\n", args...)
}

func (b *bench) has(c byte) bool { return strings.IndexByte(b.cfg.cases, c) >= 0 }

func (b *bench) run(ctx context.Context) (err error) {
	defer func() {
		for i := len(b.cleanups) - 1; i >= 0; i-- {
			b.cleanups[i]()
		}
	}()
	if b.self, err = os.Executable(); err != nil {
		return err
	}
	if b.tmp, err = os.MkdirTemp("", "lbench"); err != nil {
		return err
	}
	if b.cfg.keep {
		b.logf("keeping %s", b.tmp)
	} else {
		b.cleanups = append(b.cleanups, func() { os.RemoveAll(b.tmp) })
	}
	if err := b.setup(ctx); err != nil {
		return err
	}
	b.header()
	b.defineMetrics()
	for rep := range b.cfg.reps {
		for _, c := range []byte(b.cfg.cases) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err := b.runCase(ctx, c, rep); err != nil {
				b.failed = true
				b.logf("rep %d case %c: %v", rep+1, c, err)
				if ctx.Err() != nil {
					return ctx.Err()
				}
			}
		}
	}
	b.report()
	if b.cfg.profile != "" {
		if err := b.profileRun(ctx); err != nil {
			return fmt.Errorf("profile: %w", err)
		}
	}
	return nil
}

// setup builds the daemon and starts every long-lived process the chosen
// cases need.
func (b *bench) setup(ctx context.Context) error {
	var err error
	b.daemonBin = b.cfg.daemon
	if b.daemonBin == "" || b.cfg.profile != "" {
		if b.root, err = moduleRoot(ctx); err != nil {
			return err
		}
		b.built = gitDescribe(b.root)
	}
	if b.cfg.rev != "" {
		if b.root, b.built, err = exportRev(ctx, b.root, b.cfg.rev, filepath.Join(b.tmp, "src")); err != nil {
			return err
		}
	}
	if b.daemonBin == "" {
		b.daemonBin = filepath.Join(b.tmp, "listenerd")
		b.logf("building the daemon (go build ./daemon in %s, %s)", b.root, b.built)
		if err := buildDaemon(ctx, b.root, b.daemonBin, nil, b.log); err != nil {
			return err
		}
	}
	switch b.cfg.node {
	case "off":
	case "":
		b.nodeBin, _ = exec.LookPath("node")
	default:
		b.nodeBin = b.cfg.node
	}

	b.peerBins = map[string]string{}
	for _, fp := range forwardPeers {
		b.peerBins[fp.col] = lookPeer(b.cfg.peers[fp.col], fp.bin)
	}

	needDaemon := strings.ContainsAny(b.cfg.cases, "abcdfghik")
	if needDaemon {
		if b.d, err = b.startKept(ctx, "main", ""); err != nil {
			return err
		}
	}
	if strings.ContainsAny(b.cfg.cases, "abdgk") {
		if b.echoID, b.echoAddr, err = b.d.createListener(ctx, echoHandler()); err != nil {
			return err
		}
	}
	if strings.ContainsAny(b.cfg.cases, "abdhi") {
		if b.goEcho, err = b.startGo(ctx, "echo"); err != nil {
			return err
		}
	}
	if strings.ContainsAny(b.cfg.cases, "hi") {
		// One client connection, taking up to streamPer connections at
		// once: more than a's 64 at a time.
		if b.cfg.floor {
			if err := b.startFloor(ctx); err != nil {
				return err
			}
		} else {
			if b.handler, err = b.startHandler(ctx, b.d, b.sz.streamPer); err != nil {
				return fmt.Errorf("the Go stream handler: %w", err)
			}
			b.cleanups = append(b.cleanups, func() { _ = b.handler.closeStdin(30 * time.Second) })
		}
	}
	if strings.ContainsAny(b.cfg.cases, "abd") {
		if b.nodeBin != "" {
			if b.node, err = startNode(ctx, b.nodeBin, b.tmp, b.log); err != nil {
				return err
			}
			b.cleanups = append(b.cleanups, func() { _ = b.node.closeStdin(10 * time.Second) })
		}
	}
	if b.has('k') {
		if err := b.startNATS(ctx); err != nil {
			return fmt.Errorf("k: %w", err)
		}
	}
	if b.has('f') {
		if b.bareGRPC, err = b.startGo(ctx, "grpc", "--socket", filepath.Join(b.tmp, "bare-grpc.sock")); err != nil {
			return err
		}
		if b.saving, err = b.startKept(ctx, "saving", filepath.Join(b.tmp, "state")); err != nil {
			return err
		}
	}
	if b.has('c') {
		if b.upstream, err = b.startGo(ctx, "echo"); err != nil {
			return err
		}
		if b.goFw, err = b.startGo(ctx, "forward", "--upstream", b.upstream.addr); err != nil {
			return err
		}
		if _, b.fwdAddr, err = b.d.createListener(ctx, forwardHandler(b.upstream.addr)); err != nil {
			return err
		}
		b.startForwarders(ctx)
	}
	return nil
}

// startForwarders starts case c's peers that are installed: Node's
// forwarder and the forwardPeers. One that fails to start is left out
// with a note; it is not what the bench measures.
func (b *bench) startForwarders(ctx context.Context) {
	b.forwarders = map[string]*server{}
	add := func(col string, s *server, err error) {
		if err != nil {
			b.logf("c: leaving out %s: %v", col, err)
			return
		}
		b.cleanups = append(b.cleanups, func() { _ = s.stop(10 * time.Second) })
		b.forwarders[col] = s
	}
	if b.nodeBin != "" {
		s, err := startNode(ctx, b.nodeBin, b.tmp, b.log, b.upstream.addr)
		add(colNode, s, err)
	}
	for _, fp := range forwardPeers {
		if bin := b.peerBins[fp.col]; bin != "" {
			s, err := fp.start(ctx, b, bin, b.upstream.addr)
			add(fp.col, s, err)
		}
	}
}

func (b *bench) startGo(ctx context.Context, mode string, extra ...string) (*server, error) {
	s, err := startGoServer(ctx, b.self, nil, b.log, mode, extra...)
	if err != nil {
		return nil, err
	}
	b.cleanups = append(b.cleanups, func() { _ = s.closeStdin(10 * time.Second) })
	return s, nil
}

// header prints what ran where.
func (b *bench) header() {
	fmt.Fprintln(b.out, "listenerd bench (issue 7): ratios are listenerd / baseline, measured in the same run")
	fmt.Fprintf(b.out, "command:  %s\n", strings.Join(append([]string{"bench"}, os.Args[1:]...), " "))
	fmt.Fprintf(b.out, "machine:  %d CPUs, %s, %s\n", runtime.NumCPU(), kernel(), goVersion())
	if b.built != "" && b.cfg.daemon == "" {
		fmt.Fprintf(b.out, "daemon:   built from %s\n", b.built)
	} else {
		fmt.Fprintf(b.out, "daemon:   %s\n", b.daemonBin)
	}
	if b.nodeBin != "" {
		fmt.Fprintf(b.out, "node:     %s %s\n", b.nodeBin, nodeVersion(b.nodeBin))
	} else {
		fmt.Fprintln(b.out, "node:     none (no Node peer)")
	}
	if b.has('c') {
		var peers []string
		for _, fp := range forwardPeers {
			if bin := b.peerBins[fp.col]; bin != "" {
				peers = append(peers, fmt.Sprintf("%s (%s)", bin, peerVersion(bin, fp.versionArgs...)))
			}
		}
		if len(peers) == 0 {
			peers = []string{"none (socat, haproxy, toxiproxy-server: not installed, or off)"}
		}
		fmt.Fprintf(b.out, "c peers:  %s\n", strings.Join(peers, ", "))
	}
	fmt.Fprintf(b.out, "reps:     %d, cases %s, server order rotated every rep\n\n", b.cfg.reps, b.cfg.cases)
}

// metric is one row of the table: per-repetition values of each column.
type metric struct {
	key, label, unit, baseIs string
	higher                   bool    // higher is better
	target                   float64 // on the ratio; 0: no target
	absTarget                bool    // target applies to listenerd's own value (e)
	noNode                   bool
	vals                     map[string][]float64 // column → value per rep (NaN: none)
	cpu                      map[string][]float64 // column → server CPU µs per op per rep
	cpuUnit                  string
	aux                      map[string][]float64 // more per-rep figures, for the notes
}

func (b *bench) defineMetrics() {
	sz := b.sz
	mib := func(n int64) string { return strconv.FormatInt(n>>20, 10) + " MiB" }
	if sz.bulkBytes < 1<<20 {
		mib = func(n int64) string { return strconv.FormatInt(n>>10, 10) + " KiB" }
	}
	// Cases h-j through the API (issue 15's targets: 0.5x), or with
	// --handover the sockets themselves (issue 16's: 0.95x bulk, 0.7x
	// connection rate).
	handler, hTarget, iTarget := "stream handler", 0.5, 0.5
	switch {
	case b.cfg.handover:
		handler, hTarget, iTarget = "handover handler", 0.95, 0.7
	case b.cfg.floorReuse:
		handler = "bare grpc-go relay (floor, streams reused)"
	case b.cfg.floor:
		handler = "bare grpc-go relay (floor)"
	}
	defs := []*metric{
		{key: "a", label: fmt.Sprintf("short conns: %d x %d B echo, %d at a time, 1 watcher", sz.shortConns, sz.msg, sz.shortConc),
			unit: "conn/s", higher: true, target: 0.90, baseIs: "Go goroutine/conn io.Copy echo", cpuUnit: "µs/conn"},
		{key: "b", label: fmt.Sprintf("bulk echo: %d conns x %s", sz.bulkConns, mib(sz.bulkBytes)),
			unit: "MiB/s", higher: true, target: 0.90, baseIs: "Go goroutine/conn io.Copy echo", cpuUnit: "ms/GiB"},
		{key: "c", label: fmt.Sprintf("forward bulk: %d conns x %s to an echo upstream", sz.bulkConns, mib(sz.bulkBytes)),
			unit: "MiB/s", higher: true, target: 1.0, baseIs: "Go io.Copy forwarder", cpuUnit: "ms/GiB"},
		{key: "d50", label: fmt.Sprintf("round trip p50: %d B on one conn, %d trips", sz.msg, sz.rttN),
			unit: "µs", target: 1.2, baseIs: "Go goroutine/conn io.Copy echo", cpuUnit: "µs/trip"},
		{key: "d99", label: "round trip p99 (no target)", unit: "µs", baseIs: "Go goroutine/conn io.Copy echo"},
		{key: "e", label: fmt.Sprintf("RSS growth per idle conn after one echo, %d held", sz.holdConns),
			unit: "B/conn", target: 4096, absTarget: true, baseIs: "Go goroutine/conn, 4 KiB read buffer"},
		{key: "f", label: "CreateListener+CloseListener via API, median",
			unit: "µs", target: 10, noNode: true, baseIs: "net.Listen+Close in the client"},
		{key: "g", label: fmt.Sprintf("accept rate with %d watchers (a's load)", sz.watchers),
			unit: "conn/s", higher: true, target: 0.90, noNode: true, baseIs: "listenerd with no watcher", cpuUnit: "µs/conn"},
		{key: "k", label: "accept rate publishing every event to NATS JetStream (a's load, no watcher)",
			unit: "conn/s", higher: true, target: 0.90, noNode: true, baseIs: "listenerd without --nats", cpuUnit: "µs/conn"},
		{key: "h", label: fmt.Sprintf("%s, bulk echo: %d conns x %s", handler, sz.bulkConns, mib(sz.bulkBytes)),
			unit: "MiB/s", higher: true, target: hTarget, noNode: true, baseIs: "Go goroutine/conn io.Copy echo", cpuUnit: "ms/GiB"},
		{key: "i", label: fmt.Sprintf("%s, short conns: %d x %d B echo, %d at a time", handler, sz.shortConns, sz.msg, sz.shortConc),
			unit: "conn/s", higher: true, target: iTarget, noNode: true, baseIs: "Go goroutine/conn io.Copy echo", cpuUnit: "µs/conn"},
		{key: "i50", label: fmt.Sprintf(handler+", round trip p50: %d B, %d trips (no target)", sz.msg, sz.rttN),
			unit: "µs", noNode: true, baseIs: "Go goroutine/conn io.Copy echo", cpuUnit: "µs/trip"},
		{key: "j", label: fmt.Sprintf(handler+", RSS growth per held conn, %d held: daemon + handler (no target)", sz.streamHold),
			unit: "B/conn", noNode: true, baseIs: "Go goroutine/conn io.Copy echo"},
		{key: "jd", label: "  of which the daemon", unit: "B/conn", noNode: true, baseIs: "Go goroutine/conn io.Copy echo"},
		{key: "jh", label: "  of which the handler process", unit: "B/conn", noNode: true, baseIs: "Go goroutine/conn io.Copy echo"},
	}
	b.metrics = map[string]*metric{}
	for _, m := range defs {
		m.vals, m.cpu, m.aux = map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
		cols := []string{colDaemon, colBase, colNode}
		if m.key == "c" {
			for _, fp := range forwardPeers {
				cols = append(cols, fp.col)
			}
		}
		for _, col := range cols {
			m.vals[col] = nanSlice(b.cfg.reps)
			m.cpu[col] = nanSlice(b.cfg.reps)
		}
		b.metrics[m.key] = m
	}
}

func nanSlice(n int) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[i] = math.NaN()
	}
	return s
}

// record stores one measurement and prints it.
func (b *bench) record(key, col string, rep int, v, cpu float64) {
	m := b.metrics[key]
	m.vals[col][rep] = v
	m.cpu[col][rep] = cpu
	if b.cfg.progress {
		line := fmt.Sprintf("rep %d/%d %-3s %-9s %12.1f %s", rep+1, b.cfg.reps, key, col, v, m.unit)
		if !math.IsNaN(cpu) && m.cpuUnit != "" {
			line += fmt.Sprintf("   server cpu %.1f %s", cpu, m.cpuUnit)
		}
		b.logf("%s", line)
	}
}

// startKept starts a daemon of the bench's build that lives for the whole
// run (see startDaemon for stateDir), stopped by the run's cleanups.
func (b *bench) startKept(ctx context.Context, name, stateDir string) (*daemonProc, error) {
	d, err := startDaemon(ctx, b.daemonBin, b.tmp, name, nil, stateDir)
	if err != nil {
		return nil, err
	}
	b.cleanups = append(b.cleanups, func() {
		if err := d.stop(); err != nil {
			b.logf("daemon %s: %v", name, err)
		}
	})
	return d, nil
}

// loadgen runs this binary's load generator in a process of its own and
// returns what it printed.
func (b *bench) loadgen(ctx context.Context, mode string, args ...string) (loadResult, error) {
	cctx, cancel := context.WithTimeout(ctx, b.sz.deadline+30*time.Second)
	defer cancel()
	args = append([]string{"loadgen", mode, "--deadline", b.sz.deadline.String()}, args...)
	cmd := exec.CommandContext(cctx, b.self, args...)
	cmd.Stderr = b.log
	cmd.SysProcAttr = childAttr()
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.Output()
	if err != nil {
		return loadResult{}, fmt.Errorf("loadgen %s: %w", mode, err)
	}
	var r loadResult
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		return r, fmt.Errorf("loadgen %s printed %q: %w", mode, out, err)
	}
	if r.Errors > 0 {
		return r, fmt.Errorf("loadgen %s: %d errors, first: %s", mode, r.Errors, r.FirstErr)
	}
	return r, nil
}

// rotate returns cols starting at rep modulo their number, so every server
// takes every place in the order over the repetitions.
func rotate(cols []string, rep int) []string {
	k := rep % len(cols)
	return append(append([]string{}, cols[k:]...), cols[:k]...)
}

// peerCols are the columns of a case with a Node peer.
func (b *bench) peerCols() []string {
	if b.node != nil {
		return []string{colDaemon, colBase, colNode}
	}
	return []string{colDaemon, colBase}
}

func (b *bench) addrOf(col string) (addr string, pid int) {
	switch col {
	case colDaemon:
		return b.echoAddr, b.d.pid()
	case colNode:
		return b.node.addr, b.node.pid()
	default:
		return b.goEcho.addr, b.goEcho.pid()
	}
}

func (b *bench) runCase(ctx context.Context, c byte, rep int) error {
	switch c {
	case 'a':
		return b.runShortCase(ctx, "a", rep, b.peerCols(), 1)
	case 'b':
		return b.runBulk(ctx, rep)
	case 'c':
		return b.runForward(ctx, rep)
	case 'd':
		return b.runRTT(ctx, rep)
	case 'e':
		return b.runIdle(ctx, rep)
	case 'f':
		return b.runAPI(ctx, rep)
	case 'g':
		return b.runShortCase(ctx, "g", rep, []string{colDaemon, colBase}, b.sz.watchers)
	case 'h':
		return b.runStreamBulk(ctx, rep)
	case 'i':
		return b.runStreamShort(ctx, rep)
	case 'j':
		return b.runStreamHold(ctx, rep)
	case 'k':
		return b.runShortCase(ctx, "k", rep, []string{colDaemon, colBase}, 0)
	}
	return fmt.Errorf("unknown case %c", c)
}

// runShortCase runs a's load (connect, echo, close) against each column.
// In case a the listenerd column has one watcher attached; in case g the
// listenerd column has watchers attached and the baseline column is the
// same daemon listener with none.
func (b *bench) runShortCase(ctx context.Context, key string, rep int, cols []string, watchers int) error {
	var errs []error
	for _, col := range rotate(cols, rep) {
		var addr string
		var pid int
		switch {
		case key == "g": // both columns are the daemon: no other server runs
			addr, pid = b.echoAddr, b.d.pid()
		case key == "k" && col == colDaemon:
			addr, pid = b.natsAddr, b.natsD.pid()
		case key == "k":
			addr, pid = b.echoAddr, b.d.pid()
		default:
			addr, pid = b.addrOf(col)
		}
		var ws []*watcher
		if col == colDaemon {
			var err error
			if ws, err = attachWatchers(ctx, b.d.socket, watchers, b.echoID); err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %w", key, col, err))
				continue
			}
		}
		c0, self0 := cpuTime(pid), selfCPU()
		r, err := b.loadgen(ctx, "short", "--addr", addr, "--conns", itoa(b.sz.shortConns),
			"--concurrency", itoa(b.sz.shortConc), "--size", itoa(b.sz.msg), "--warmup", itoa(b.sz.shortWarm))
		if err == nil && len(ws) > 0 {
			// Every watcher must have read every close event: the load is
			// not over until the watchers have it.
			err = waitWatchers(ctx, ws, r.Ops+r.WarmOps, time.Minute)
		}
		c1, self1 := cpuTime(pid), selfCPU()
		events, resps := batching(ws)
		detachWatchers(ws)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", key, col, err))
			continue
		}
		conns := float64(r.Ops + r.WarmOps)
		b.record(key, col, rep, r.Rate, us(c1-c0)/conns)
		if len(ws) > 0 && b.cfg.progress {
			// The watchers' client side (this process) shares the machine.
			b.logf("            %d watchers: %.1f events a response, client cpu %.1f µs/conn",
				len(ws), float64(events)/float64(max(resps, 1)), us(self1-self0)/conns)
		}
		if key == "k" && col == colDaemon && b.cfg.progress {
			// k's NATS server runs in this process and shares the machine;
			// the server CPU above is the daemon's alone.
			b.logf("            NATS server (this process): cpu %.1f µs/conn", us(self1-self0)/conns)
		}
	}
	return errors.Join(errs...)
}

func (b *bench) runBulk(ctx context.Context, rep int) error {
	var errs []error
	for _, col := range rotate(b.peerCols(), rep) {
		addr, pid := b.addrOf(col)
		if err := b.bulkOnce(ctx, "b", col, rep, addr, pid); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (b *bench) runForward(ctx context.Context, rep int) error {
	var errs []error
	cols := []string{colDaemon, colBase}
	if b.forwarders[colNode] != nil {
		cols = append(cols, colNode)
	}
	for _, fp := range forwardPeers {
		if b.forwarders[fp.col] != nil {
			cols = append(cols, fp.col)
		}
	}
	for _, col := range rotate(cols, rep) {
		addr, pid := b.fwdAddr, b.d.pid()
		switch col {
		case colDaemon:
		case colBase:
			addr, pid = b.goFw.addr, b.goFw.pid()
		default:
			addr, pid = b.forwarders[col].addr, b.forwarders[col].pid()
		}
		var extra []string
		if peer := forwardPeerOf(col); peer != nil && peer.noHalfClose {
			extra = []string{"--half-close=false"}
		}
		if err := b.bulkOnce(ctx, "c", col, rep, addr, pid, extra...); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (b *bench) bulkOnce(ctx context.Context, key, col string, rep int, addr string, pid int, extra ...string) error {
	c0 := cpuTime(pid)
	r, err := b.loadgen(ctx, "bulk", append([]string{"--addr", addr, "--conns", itoa(b.sz.bulkConns), "--bytes", strconv.FormatInt(b.sz.bulkBytes, 10)}, extra...)...)
	c1 := cpuTime(pid)
	if err != nil {
		return fmt.Errorf("%s %s: %w", key, col, err)
	}
	gib := float64(r.Bytes) / (1 << 30)
	b.record(key, col, rep, r.MiBps, float64(c1-c0)/float64(time.Millisecond)/gib)
	return nil
}

func (b *bench) runRTT(ctx context.Context, rep int) error {
	var errs []error
	for _, col := range rotate(b.peerCols(), rep) {
		addr, pid := b.addrOf(col)
		c0 := cpuTime(pid)
		r, err := b.loadgen(ctx, "rtt", "--addr", addr, "--n", itoa(b.sz.rttN), "--warmup", itoa(b.sz.rttWarm), "--size", itoa(b.sz.msg))
		c1 := cpuTime(pid)
		if err != nil {
			errs = append(errs, fmt.Errorf("d %s: %w", col, err))
			continue
		}
		b.record("d50", col, rep, r.P50us, us(c1-c0)/float64(b.sz.rttN+b.sz.rttWarm))
		b.record("d99", col, rep, r.P99us, math.NaN())
	}
	return errors.Join(errs...)
}

func (b *bench) runAPI(ctx context.Context, rep int) error {
	// Bursts of 40 pairs (80 mutations) with a second after each stay
	// under the daemon's default --api-rate of 100 a second, burst 200.
	r, err := b.loadgen(ctx, "api", "--socket", b.d.socket, "--bare", b.bareGRPC.addr, "--n", itoa(b.sz.apiN), "--warmup", "10",
		"--burst", "40", "--pause", "1s")
	if err != nil {
		return fmt.Errorf("f: %w", err)
	}
	b.record("f", colDaemon, rep, r.APIus, math.NaN())
	b.record("f", colBase, rep, r.RawUS, math.NaN())
	// The same pairs on a daemon that saves its state to disk (the
	// default; the table's daemon runs --ephemeral): every change waits
	// for its save.
	s, err := b.loadgen(ctx, "api", "--socket", b.saving.socket, "--n", itoa(b.sz.apiN), "--warmup", "10",
		"--burst", "40", "--pause", "1s")
	if err != nil {
		return fmt.Errorf("f (state saved): %w", err)
	}
	m := b.metrics["f"]
	for k, v := range map[string]float64{"create": r.CreateUS, "close": r.CloseUS, "rpc": r.RPCus, "bare": r.BareUS,
		"saved": s.APIus, "savedRaw": s.RawUS} {
		if m.aux[k] == nil {
			m.aux[k] = nanSlice(b.cfg.reps)
		}
		m.aux[k][rep] = v
	}
	if b.cfg.progress {
		b.logf("            CreateListener %.0f µs, CloseListener %.0f µs, a no-op RPC (health check) %.0f µs, on a bare grpc-go server %.0f µs",
			r.CreateUS, r.CloseUS, r.RPCus, r.BareUS)
		b.logf("            state saved: CreateListener+CloseListener %.0f µs, net.Listen+Close %.0f µs", s.APIus, s.RawUS)
	}
	return nil
}

// runIdle is case e: each server starts fresh in its own process, takes
// holdConns connections from two client processes (each under the
// open-file limit), echoes once on each, and the growth of its VmRSS is
// divided by the connections held.
func (b *bench) runIdle(ctx context.Context, rep int) error {
	cols := []string{colDaemon, colBase}
	if b.nodeBin != "" {
		cols = append(cols, colNode)
	}
	var errs []error
	for _, col := range rotate(cols, rep) {
		v, err := b.idleOnce(ctx, col, rep)
		if err != nil {
			errs = append(errs, fmt.Errorf("e %s: %w", col, err))
			continue
		}
		b.record("e", col, rep, v, math.NaN())
	}
	return errors.Join(errs...)
}

// freshServer starts a new server process for col and returns its address,
// its pid and how to stop it.
func (b *bench) freshServer(ctx context.Context, col, name string, env []string, bin string) (string, int, func(), error) {
	switch col {
	case colDaemon:
		d, err := startDaemon(ctx, bin, b.tmp, name, env, "")
		if err != nil {
			return "", 0, nil, err
		}
		_, addr, err := d.createListener(ctx, echoHandler())
		if err != nil {
			d.stop()
			return "", 0, nil, err
		}
		return addr, d.pid(), func() {
			if err := d.stop(); err != nil {
				b.logf("%s: %v", name, err)
			}
		}, nil
	case colNode:
		s, err := startNode(ctx, b.nodeBin, b.tmp, b.log)
		if err != nil {
			return "", 0, nil, err
		}
		return s.addr, s.pid(), func() { _ = s.closeStdin(10 * time.Second) }, nil
	default:
		s, err := startGoServer(ctx, b.self, nil, b.log, "echo4k")
		if err != nil {
			return "", 0, nil, err
		}
		return s.addr, s.pid(), func() { _ = s.closeStdin(10 * time.Second) }, nil
	}
}

func (b *bench) idleOnce(ctx context.Context, col string, rep int) (float64, error) {
	addr, pid, stop, err := b.freshServer(ctx, col, fmt.Sprintf("e%d", rep), nil, b.daemonBin)
	if err != nil {
		return 0, err
	}
	defer stop()
	held, err := b.hold(ctx, addr, pid)
	if err != nil {
		return 0, err
	}
	if b.cfg.progress {
		b.logf("            %s: VmRSS %d KiB before, %d KiB with %d connections held", col, held.rss0[0], held.rss1[0], b.sz.holdConns)
	}
	return held.perConn[0], nil
}

// holdResult is what holding the connections measured, for each process
// watched.
type holdResult struct {
	rss0, rss1 []int64 // KiB
	perConn    []float64
	release    func() // closes the connections
}

// hold warms the server up with a few short connections, reads its RSS,
// opens holdConns connections from two client processes (each under the
// open-file limit), echoes once on each, reads its RSS again and releases
// them.
func (b *bench) hold(ctx context.Context, addr string, pid int) (holdResult, error) {
	h, err := b.holdHook(ctx, addr, b.sz.holdConns, []int{pid}, nil)
	if err != nil {
		return h, err
	}
	h.release()
	return h, nil
}

// holdHook is hold with n connections, the RSS of each of pids (the
// processes that serve them) and a hook run after the first RSS reading;
// on success the connections stay open until the caller calls release.
func (b *bench) holdHook(ctx context.Context, addr string, n int, pids []int, before func()) (res holdResult, err error) {
	// One-time costs (first buffers, poller, pools) are not per connection.
	if _, err := b.loadgen(ctx, "short", "--addr", addr, "--conns", "64", "--concurrency", "8", "--size", itoa(b.sz.msg)); err != nil {
		return res, fmt.Errorf("warm-up: %w", err)
	}
	time.Sleep(b.sz.settle)
	if res.rss0, err = rssOf(pids); err != nil {
		return res, err
	}
	if before != nil {
		before()
	}
	parts := []int{n / 2, n - n/2}
	var clients []*proc
	release := func() {
		for _, c := range clients {
			_ = c.closeStdin(time.Minute)
		}
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	for i, k := range parts {
		p, err := startProc(fmt.Sprintf("hold client %d", i), nil, b.log, b.self, "loadgen", "hold",
			"--deadline", b.sz.deadline.String(), "--addr", addr, "--conns", itoa(k),
			"--concurrency", itoa(b.sz.holdConc), "--size", itoa(b.sz.msg))
		if err != nil {
			return res, err
		}
		clients = append(clients, p)
	}
	for i, p := range clients {
		l, err := p.line(ctx, b.sz.deadline)
		if err != nil {
			return res, err
		}
		var r loadResult
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			return res, fmt.Errorf("hold client printed %q: %w", l, err)
		}
		if r.Ready != parts[i] || r.Errors > 0 {
			return res, fmt.Errorf("hold client %d: %d of %d connections held, %d errors, first: %s", i, r.Ready, parts[i], r.Errors, r.FirstErr)
		}
	}
	time.Sleep(b.sz.settle)
	if res.rss1, err = rssOf(pids); err != nil {
		return res, err
	}
	for i := range pids {
		res.perConn = append(res.perConn, float64(res.rss1[i]-res.rss0[i])*1024/float64(n))
	}
	res.release = release
	return res, nil
}

// rssOf reads VmRSS of each of pids.
func rssOf(pids []int) ([]int64, error) {
	out := make([]int64, len(pids))
	for i, pid := range pids {
		v, err := rssKiB(pid)
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

func itoa(n int) string { return strconv.Itoa(n) }

func kernel() string {
	data, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return "Linux " + strings.TrimSpace(string(data))
}

func goVersion() string {
	out, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		return "go (unknown version)"
	}
	return strings.TrimSpace(string(out))
}

func nodeVersion(node string) string {
	out, err := exec.Command(node, "--version").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func gitDescribe(root string) string {
	out, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty").Output()
	if err != nil {
		return "the working tree in " + root
	}
	d := strings.TrimSpace(string(out))
	if strings.HasSuffix(d, "-dirty") {
		return "the working tree in " + root + " (commit " + d + ": uncommitted changes included)"
	}
	return "commit " + d
}

// exportRev extracts revision rev of the repository at root into dir (git
// archive: the repository is not touched) and returns the module root in
// it and a description of the commit.
func exportRev(ctx context.Context, root, rev, dir string) (string, string, error) {
	out, err := exec.CommandContext(ctx, "git", "-C", root, "rev-parse", "--verify", rev+"^{commit}").Output()
	if err != nil {
		return "", "", fmt.Errorf("--rev %s: not a commit of %s", rev, root)
	}
	commit := strings.TrimSpace(string(out))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	archive := exec.CommandContext(ctx, "sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3"`, "sh", root, commit, dir)
	if out, err := archive.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("git archive %s: %v: %s", rev, err, out)
	}
	short := commit
	if len(short) > 12 {
		short = short[:12]
	}
	return dir, "commit " + short + " (" + rev + ", via git archive)", nil
}
