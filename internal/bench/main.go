// Command bench measures listenerd against a bare Go server doing the same
// job, side by side in the same run (issue 7). It builds the daemon, starts
// it on a temporary socket, creates its listeners through the gRPC API, and
// drives the load from separate processes (this binary re-executed as a
// hidden "loadgen" subcommand) against the daemon, against bare Go servers
// (this binary as a hidden "serve" subcommand, each in its own process) and,
// where node is on PATH, against Node's net.createServer. Servers are
// measured interleaved, in a rotating order, over several repetitions; the
// table gives per-case medians and the median of the per-repetition ratios.
//
//	go run ./internal/bench               # every case, 5 repetitions
//	go run ./internal/bench --quick       # tiny sizes, 1 repetition (CI smoke)
//	go run ./internal/bench --cases a,e --profile /tmp/prof
//	go run ./internal/bench --rev HEAD~3  # the daemon of another commit
//
// Cases (issue 7): a short connections with one watcher; b bulk echo;
// c forward; d small-message round trip; e memory per idle connection;
// f CreateListener+CloseListener against net.Listen+Close; g accept rate
// with 10 watchers against none. Cases (issue 15), through a Go stream
// handler (this binary as "serve --mode stream") against the bare Go echo
// server: h bulk echo; i connection rate and round trip; j memory per
// held connection. Case k, the accept rate of a daemon publishing every
// event to NATS JetStream (--nats, to a JetStream server embedded in this
// process) against the same load on a daemon without --nats.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	raiseNoFile()
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "loadgen":
			os.Exit(loadgenMain(os.Args[2:]))
		case "serve":
			os.Exit(serveMain(os.Args[2:]))
		}
	}
	os.Exit(benchMain(os.Args[1:], os.Stdout, os.Stderr))
}

// raiseNoFile raises the soft open-file limit to the hard one. Go does it
// at start already; doing it here keeps the intent visible, since case e
// holds 19,500 connections against a limit of 20,000.
func raiseNoFile() {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err == nil && r.Cur < r.Max {
		r.Cur = r.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
	}
}

// config is what the flags ask for.
type config struct {
	reps       int
	quick      bool
	cases      string
	daemon     string            // prebuilt daemon binary; empty: build one
	rev        string            // build the daemon from this git revision instead of the working tree
	node       string            // node binary; empty: look it up; "off": none
	peers      map[string]string // case c's forwardPeers by column, as node
	profile    string            // directory for pprof profiles of cases a, e, g, i and k
	handover   bool              // cases h-j: the handler takes the sockets (handover), not their bytes
	floor      bool              // cases h, i: a bare grpc-go relay in listenerd's place (floor.go)
	floorReuse bool              // with floor: the relay reuses finished streams
	timeout    time.Duration
	keep       bool
	progress   bool
}

// sizes are the loads of the cases.
type sizes struct {
	shortConns, shortConc, shortWarm int   // a, g
	msg                              int   // a, d, e, g: bytes echoed
	bulkConns                        int   // b, c
	bulkBytes                        int64 // b, c: per connection
	rttN, rttWarm                    int   // d
	holdConns, holdConc              int   // e: across two client processes
	apiN                             int   // f
	watchers                         int   // g
	streamHold                       int   // j: connections held through the stream handler
	streamPer                        int   // h, i, j: connections a handler's client connection takes at once
	deadline                         time.Duration
	settle                           time.Duration // e: before reading RSS
	profileSeconds                   int
}

func fullSizes() sizes {
	return sizes{
		shortConns: 20000, shortConc: 64, shortWarm: 1000,
		msg:       16,
		bulkConns: 8, bulkBytes: 64 << 20,
		rttN: 20000, rttWarm: 2000,
		holdConns: 19500, holdConc: 64,
		apiN:     200,
		watchers: 10,
		// A held stream connection cost about 34 KB in the daemon and 23
		// KB in the handler when this was written: 4,000 are about 230 MB.
		streamHold: 4000,
		streamPer:  64, // the Go package's default concurrency, as a program gets it
		deadline:   3 * time.Minute,
		settle:     time.Second,
		// Long enough to cover several case-a runs.
		profileSeconds: 10,
	}
}

func quickSizes() sizes {
	return sizes{
		shortConns: 300, shortConc: 8, shortWarm: 20,
		msg:       16,
		bulkConns: 2, bulkBytes: 1 << 20,
		rttN: 200, rttWarm: 20,
		holdConns: 200, holdConc: 8,
		apiN:           10,
		watchers:       10,
		streamHold:     100,
		streamPer:      40, // j's 100 then need three client connections
		deadline:       time.Minute,
		settle:         100 * time.Millisecond,
		profileSeconds: 2,
	}
}

const allCases = "abcdefghijk"

func benchMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	fs.IntVar(&cfg.reps, "reps", 5, "repetitions of every case (medians are taken over them)")
	fs.BoolVar(&cfg.quick, "quick", false, "tiny sizes and 1 repetition: proves the bench works, measures nothing")
	fs.StringVar(&cfg.cases, "cases", allCases, "cases to run, e.g. \"a,e\" (a-g: issue 7; h-j: the stream handler, issue 15; k: publishing to NATS JetStream)")
	fs.StringVar(&cfg.daemon, "daemon", "", "use this daemon binary instead of building ./daemon")
	fs.StringVar(&cfg.rev, "rev", "", "build the daemon from this git `revision` (git archive into the temporary directory) instead of the working tree")
	fs.StringVar(&cfg.node, "node", "", "node binary for the Node peer (default: node on PATH; \"off\": no Node peer)")
	peerFlags := map[string]*string{}
	for _, fp := range forwardPeers {
		peerFlags[fp.col] = fs.String(fp.col, "", fmt.Sprintf("%s binary for case c's %s peer (default: %s on PATH; \"off\": none)", fp.bin, fp.col, fp.bin))
	}
	fs.BoolVar(&cfg.floor, "floor", false, "cases h and i: in listenerd's column, the floor of the stream handler's design: a bare grpc-go relay, a stream a socket, and an echo at its other end (two processes of this binary, nothing else)")
	fs.BoolVar(&cfg.floorReuse, "floor-reuse", false, "--floor with the relay's streams reused: a socket takes, if there is one, an idle stream whose socket ended (one socket at a time on a stream)")
	fs.BoolVar(&cfg.handover, "handover", false, "cases h, i and j: the Go handler takes the sockets themselves (issue 16's handover) instead of their bytes through the API")
	streamPer := fs.Int("stream-per", 0, "cases h, i and j: connections each client connection of the Go stream handler serves at once, its WithConcurrency (0: 64, the Go package's default, or 40 with --quick)")
	fs.StringVar(&cfg.profile, "profile", "", "after measuring, profile a variant of the daemon (same source, plus a pprof endpoint) under cases a, e, g, i and k (a and e next to the Go baseline; i with the Go stream handler, and perf stat's counts when perf is installed), and write the profiles to `DIR`")
	fs.DurationVar(&cfg.timeout, "timeout", 20*time.Minute, "bound on the whole run")
	fs.BoolVar(&cfg.keep, "keep", false, "keep the temporary directory (daemon log, binaries)")
	fs.BoolVar(&cfg.progress, "progress", true, "print every measurement on stderr as it is taken")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bench: unexpected arguments %v\n", fs.Args())
		return 2
	}
	cfg.floor = cfg.floor || cfg.floorReuse
	cfg.peers = map[string]string{}
	for col, v := range peerFlags {
		cfg.peers[col] = *v
	}
	sz := fullSizes()
	if cfg.quick {
		sz = quickSizes()
		if !flagSet(fs, "reps") {
			cfg.reps = 1
		}
		if !flagSet(fs, "timeout") {
			cfg.timeout = 5 * time.Minute
		}
	}
	if *streamPer < 0 || *streamPer > 65535 {
		fmt.Fprintln(stderr, "bench: --stream-per must be 0-65535")
		return 2
	}
	if *streamPer > 0 {
		sz.streamPer = *streamPer
	}
	cases := strings.ReplaceAll(strings.ToLower(cfg.cases), ",", "")
	for _, c := range cases {
		if !strings.ContainsRune(allCases, c) {
			fmt.Fprintf(stderr, "bench: unknown case %q (a-j)\n", c)
			return 2
		}
	}
	if cfg.daemon != "" && cfg.rev != "" {
		fmt.Fprintln(stderr, "bench: --daemon and --rev exclude each other")
		return 2
	}
	if cfg.reps < 1 || cfg.reps > 100 {
		fmt.Fprintln(stderr, "bench: --reps must be 1-100")
		return 2
	}
	cfg.cases = cases

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()

	b := &bench{cfg: cfg, sz: sz, out: stdout, log: stderr}
	if err := b.run(ctx); err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	if b.failed {
		return 1
	}
	return 0
}

func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}
