// Command probe is listenerd's reliability probe. It drives the real
// daemon and ctl binaries from outside — the public gRPC API, ctl, raw TCP
// sockets, /proc and the metrics endpoint — on 127.0.0.1 with temporary
// sockets and state directories, in eight phases:
//
//  1. storm: connections spread over echo, discard and forward listeners
//     (one with a low max_connections, one port closed), each client
//     counting its own outcomes, compared with the daemon's per-listener
//     counts and with the events a watcher saw;
//  2. listeners: many created at once, half closed, the daemon restarted
//     (SIGTERM): every acknowledged create back with its id and port,
//     every acknowledged close still closed;
//  3. events: short connections until the daemon has published the target
//     number of events; the watcher, resumed with after_sequence several
//     times, saw every sequence once;
//  4. kills: the daemon SIGKILLed in the middle of a burst of creates,
//     closes and connections, restarted on the same state directory:
//     nothing acknowledged is lost;
//  5. corrupt: damaged state files: the daemon refuses to start naming the
//     file (which it leaves as it was) or starts, and never panics;
//  6. bad calls: malformed requests get the documented code naming the
//     field, bytes that are not gRPC do no harm, descriptors and goroutines
//     come back to where they were;
//  7. descriptors: under prlimit --nofile=64:64 with connections held,
//     ctl ls answers and a create is RESOURCE_EXHAUSTED;
//  8. leaks: the first daemon, every listener closed, is back to its
//     starting descriptors and goroutines.
//
// It prints a table: per phase, its counts, the mismatches (each must be
// 0) and the time taken, and exits 1 when any mismatch was found.
// Linux only (/proc, prlimit).
//
//	go run ./scripts/probe                      # builds ./daemon and ./ctl; full scale
//	go run ./scripts/probe --quick              # a smoke run of a few seconds
//	go run ./scripts/probe --daemon /tmp/listenerd --ctl /tmp/ctl --connections 50000 --timeout 10m
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// config is what the flags set.
type config struct {
	daemon, ctl string
	connections int
	clients     int
	listeners   int
	events      uint64
	resumes     int
	kills       int
	badCalls    bool
	stormTime   time.Duration
	timeout     time.Duration
	only        string
	verbose     bool
	quick       bool
	out         io.Writer
}

func main() {
	var cfg config
	quick := flag.Bool("quick", false, "a tiny smoke run: 2,000 connections, 40 listeners, 20,000 events, 2 kills")
	flag.StringVar(&cfg.daemon, "daemon", "", "the daemon binary (default: go build ./daemon)")
	flag.StringVar(&cfg.ctl, "ctl", "", "the ctl binary (default: go build ./ctl)")
	flag.IntVar(&cfg.connections, "connections", 300_000, "connections of the storm (phase 1)")
	flag.IntVar(&cfg.clients, "clients", 64, "client goroutines making connections at once")
	flag.IntVar(&cfg.listeners, "listeners", 2000, "listeners created in phase 2")
	flag.Uint64Var(&cfg.events, "events", 1_000_000, "events the first daemon publishes by the end of phase 3")
	flag.IntVar(&cfg.resumes, "resumes", 8, "times the watcher drops its stream and resumes with after_sequence")
	flag.IntVar(&cfg.kills, "kills", 12, "SIGKILLs in phase 4")
	flag.DurationVar(&cfg.stormTime, "storm-time", 10*time.Minute, "the storm and the event loop stop after this, whatever their counts")
	flag.DurationVar(&cfg.timeout, "timeout", 30*time.Minute, "the whole run stops after this")
	flag.StringVar(&cfg.only, "phases", "1,2,3,4,5,6,7,8", "phases to run (1 and 3 and 6 and 8 share a daemon)")
	flag.BoolVar(&cfg.verbose, "v", false, "print progress")
	flag.Parse()
	if *quick {
		cfg = quickConfig(cfg)
	}
	cfg.out = os.Stdout
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(2)
	}
	if !ok {
		os.Exit(1)
	}
}

// run runs the phases cfg asks for and prints the summary; ok is false
// when any phase found a mismatch.
func run(ctx context.Context, cfg config) (ok bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	tmp, err := os.MkdirTemp("", "probe")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(tmp)
	if cfg.daemon == "" || cfg.ctl == "" {
		if err := build(ctx, &cfg, tmp); err != nil {
			return false, err
		}
	}
	p := &probe{cfg: cfg, tmp: tmp, logw: io.Discard}
	if cfg.verbose {
		p.logw = os.Stderr
	}
	defer func() { // whatever phases ran or stopped half-way
		if p.st != nil {
			p.st.cancelW()
			<-p.st.wDone
		}
		if p.persist != nil {
			_, _ = p.persist.d.stop()
		}
	}()
	want := map[string]bool{}
	for ph := range strings.SplitSeq(cfg.only, ",") {
		want[strings.TrimSpace(ph)] = true
	}
	var results []*result
	do := func(name string, f func(context.Context, *result) error) {
		if !want[name[:1]] {
			return
		}
		r := &result{name: name}
		start := time.Now()
		if ctx.Err() != nil {
			r.fail("not run: %v", ctx.Err())
		} else if err := f(ctx, r); err != nil {
			r.fail("aborted: %v", err)
		}
		r.took = time.Since(start)
		results = append(results, r)
		p.logf("phase %s done in %v: %d mismatches", name, r.took.Round(time.Millisecond), r.mismatches)
	}
	// The first daemon lives from phase 1 to phase 8.
	shared := want["1"] || want["3"] || want["6"] || want["8"]
	if shared {
		if err := p.startMain(ctx); err != nil {
			return false, err
		}
		defer p.main.stop()
	}
	do("1 storm", p.stormPhase)
	do("3 events", p.events)
	do("6 bad calls", p.badCalls)
	do("2 listeners", p.listenersPhase)
	do("4 kills", p.kills)
	do("5 corrupt state", p.corrupt)
	do("7 descriptors", p.descriptors)
	do("8 leaks", p.leaks)
	if shared {
		r := &result{name: "  daemon exit"}
		if code, err := p.main.stop(); err != nil || code != 0 {
			r.fail("first daemon exit %d on SIGTERM: %v", code, err)
		}
		r.count("exit code", 0)
		if n := p.main.panics(); n > 0 {
			r.fail("first daemon's stderr has %d panic lines", n)
		}
		results = append(results, r)
	}
	return summary(cfg.out, results), nil
}

// quickConfig is cfg scaled down to a smoke run of a few seconds.
func quickConfig(cfg config) config {
	cfg.connections, cfg.listeners, cfg.events, cfg.kills, cfg.resumes = 2000, 40, 20_000, 2, 3
	cfg.clients, cfg.quick = 16, true
	return cfg
}

// build builds the daemon and ctl from the module this command is run in.
func build(ctx context.Context, cfg *config, dir string) error {
	root, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := filepath.Dir(strings.TrimSpace(string(root)))
	for _, b := range []struct {
		dst *string
		pkg string
	}{{&cfg.daemon, "./daemon"}, {&cfg.ctl, "./ctl"}} {
		if *b.dst != "" {
			continue
		}
		out := filepath.Join(dir, filepath.Base(b.pkg))
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, b.pkg)
		cmd.Dir = mod
		if msg, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", b.pkg, err, msg)
		}
		*b.dst = out
	}
	return nil
}

// result is one phase's outcome: named counts, mismatches and notes.
type result struct {
	name       string
	counts     []string
	mismatches int
	notes      []string
	took       time.Duration
}

func (r *result) count(name string, v any) {
	r.counts = append(r.counts, fmt.Sprintf("%s %v", name, v))
}

// fail records a mismatch.
func (r *result) fail(format string, args ...any) {
	r.mismatches++
	if len(r.notes) < 40 {
		r.notes = append(r.notes, "MISMATCH: "+fmt.Sprintf(format, args...))
	} else if len(r.notes) == 40 {
		r.notes = append(r.notes, "MISMATCH: … (more not shown)")
	}
}

// note records something worth saying that is not a mismatch.
func (r *result) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

func summary(w io.Writer, results []*result) bool {
	ok := true
	fmt.Fprintf(w, "\n%-18s %10s %9s  %s\n", "phase", "mismatches", "time", "counts")
	for _, r := range results {
		fmt.Fprintf(w, "%-18s %10d %8.1fs  %s\n", r.name, r.mismatches, r.took.Seconds(), strings.Join(r.counts, ", "))
		for _, n := range r.notes {
			fmt.Fprintf(w, "%-18s %10s %9s    %s\n", "", "", "", n)
		}
		if r.mismatches > 0 {
			ok = false
		}
	}
	if ok {
		fmt.Fprintln(w, "\nno mismatch")
	} else {
		fmt.Fprintln(w, "\nMISMATCHES FOUND")
	}
	return ok
}
