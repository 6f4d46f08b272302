package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/listenerd/listenerd/api/listenerd"
)

// Cases h, i and j (issue 15) measure the stream handler: a Go program
// that serves the daemon's sockets itself, through the API, with the
// client package's net.Listener. The program is this binary re-executed
// as "serve --mode stream" (serveStream); its job is the bare Go echo
// server's, so the baseline is that server ("serve --mode echo").
// listenerd's column is the daemon and the handler process together.

// serveStream is the Go stream handler: it creates a listener on the
// daemon at socket with Listen, attaches clients-1 more client
// connections of its own to it with Attach (the API serves at most 128
// streams on one client connection, one a socket), each taking per
// connections at once, prints the listener's address and echoes every
// connection with io.Copy(c, c), as the bare Go server does. With
// pprofAddr it serves net/http/pprof there too (--profile, case i). It
// serves until its stdin closes, then closes the listener on the daemon.
func serveStream(socket string, clients, per int, handover bool, pprofAddr string) int {
	if socket == "" || clients < 1 || per < 1 {
		fmt.Fprintln(os.Stderr, "serve: --mode stream needs --socket, --clients >= 1 and --per >= 1")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var cs []*listenerd.Client
	var ls []*listenerd.Listener
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "serve stream:", err)
		for i := len(ls) - 1; i >= 0; i-- {
			_ = ls[i].Close()
		}
		for _, c := range cs {
			_ = c.Close()
		}
		return 1
	}
	for i := range clients {
		c, err := listenerd.Dial(listenerd.Options{Socket: socket, NoHandover: !handover})
		if err != nil {
			return fail(err)
		}
		cs = append(cs, c)
		var l *listenerd.Listener
		if i == 0 {
			l, err = c.Listen(ctx, "127.0.0.1:0", listenerd.WithConcurrency(per), listenerd.WithLabel("bench"))
		} else {
			l, err = c.Attach(ctx, ls[0].ID(), listenerd.WithConcurrency(per), listenerd.WithLabel("bench"))
		}
		if err != nil {
			return fail(err)
		}
		ls = append(ls, l)
	}
	fmt.Println(ls[0].Addr())
	if err := servePprof(pprofAddr); err != nil {
		return fail(err)
	}
	for _, l := range ls {
		// As the bare Go echo server serves its own: a goroutine each,
		// io.Copy(c, c), then Close.
		go acceptLoop(l.Accept, func(c net.Conn) { _, _ = io.Copy(c, c) })
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	// The attached ones detach; the first, made by Listen, closes the
	// listener on the daemon.
	for i := len(ls) - 1; i >= 0; i-- {
		_ = ls[i].Close()
	}
	for _, c := range cs {
		_ = c.Close()
	}
	return 0
}

// startHandler starts the Go stream handler on d, with enough client
// connections to take conns connections at once; extra are more flags
// of serve.
func (b *bench) startHandler(ctx context.Context, d *daemonProc, conns int, extra ...string) (*server, error) {
	per := b.sz.streamPer
	clients := max(1, (conns+per-1)/per)
	return startGoServer(ctx, b.self, nil, b.log, "stream", append([]string{"--socket", d.socket,
		"--clients", itoa(clients), "--per", itoa(per), "--handover=" + strconv.FormatBool(b.cfg.handover)}, extra...)...)
}

// streamAddr returns the address and the processes of a column of h and
// i: the daemon's listener served by the Go stream handler, or the bare
// Go echo server.
func (b *bench) streamAddr(col string) (addr string, pids []int) {
	if col == colDaemon {
		if b.cfg.floor {
			return b.handler.addr, []int{b.handler.pid(), b.floorEcho.pid()}
		}
		return b.handler.addr, []int{b.d.pid(), b.handler.pid()}
	}
	return b.goEcho.addr, []int{b.goEcho.pid()}
}

// cpuOf is the CPU time of each of pids.
func cpuOf(pids []int) []time.Duration {
	out := make([]time.Duration, len(pids))
	for i, p := range pids {
		out[i] = cpuTime(p)
	}
	return out
}

// recordSplit returns the CPU per operation (per) of pids together, from
// c0 to c1, and keeps the daemon's and the handler's shares of it for the
// notes when pids are the two of listenerd's column.
func (b *bench) recordSplit(key string, rep int, pids []int, c0, c1 []time.Duration, per func(time.Duration) float64) float64 {
	m := b.metrics[key]
	var total time.Duration
	for i := range pids {
		total += c1[i] - c0[i]
	}
	if len(pids) == 2 {
		for i, k := range []string{"daemonCPU", "handlerCPU"} {
			if m.aux[k] == nil {
				m.aux[k] = nanSlice(b.cfg.reps)
			}
			m.aux[k][rep] = per(c1[i] - c0[i])
		}
	}
	return per(total)
}

// runStreamBulk is case h: b's load through the Go stream handler and on
// the bare Go echo server.
func (b *bench) runStreamBulk(ctx context.Context, rep int) error {
	var errs []error
	for _, col := range rotate([]string{colDaemon, colBase}, rep) {
		addr, pids := b.streamAddr(col)
		c0 := cpuOf(pids)
		r, err := b.loadgen(ctx, "bulk", "--addr", addr, "--conns", itoa(b.sz.bulkConns), "--bytes", strconv.FormatInt(b.sz.bulkBytes, 10))
		c1 := cpuOf(pids)
		if err != nil {
			errs = append(errs, fmt.Errorf("h %s: %w", col, err))
			continue
		}
		gib := float64(r.Bytes) / (1 << 30)
		cpu := b.recordSplit("h", rep, pids, c0, c1, func(d time.Duration) float64 {
			return float64(d) / float64(time.Millisecond) / gib
		})
		b.record("h", col, rep, r.MiBps, cpu)
	}
	return errors.Join(errs...)
}

// runStreamShort is case i: a's load (connect, echo, close) and d's (round
// trips on one connection) through the Go stream handler and on the bare
// Go echo server.
func (b *bench) runStreamShort(ctx context.Context, rep int) error {
	var errs []error
	for _, col := range rotate([]string{colDaemon, colBase}, rep) {
		addr, pids := b.streamAddr(col)
		c0 := cpuOf(pids)
		r, err := b.loadgen(ctx, "short", "--addr", addr, "--conns", itoa(b.sz.shortConns),
			"--concurrency", itoa(b.sz.shortConc), "--size", itoa(b.sz.msg), "--warmup", itoa(b.sz.shortWarm))
		c1 := cpuOf(pids)
		if err != nil {
			errs = append(errs, fmt.Errorf("i %s: %w", col, err))
			continue
		}
		conns := float64(r.Ops + r.WarmOps)
		cpu := b.recordSplit("i", rep, pids, c0, c1, func(d time.Duration) float64 { return us(d) / conns })
		b.record("i", col, rep, r.Rate, cpu)

		c0 = cpuOf(pids)
		t, err := b.loadgen(ctx, "rtt", "--addr", addr, "--n", itoa(b.sz.rttN), "--warmup", itoa(b.sz.rttWarm), "--size", itoa(b.sz.msg))
		c1 = cpuOf(pids)
		if err != nil {
			errs = append(errs, fmt.Errorf("i rtt %s: %w", col, err))
			continue
		}
		trips := float64(b.sz.rttN + b.sz.rttWarm)
		cpu = b.recordSplit("i50", rep, pids, c0, c1, func(d time.Duration) float64 { return us(d) / trips })
		b.record("i50", col, rep, t.P50us, cpu)
	}
	return errors.Join(errs...)
}

// runStreamHold is case j: a fresh daemon with a fresh Go stream handler,
// and a fresh bare Go echo server, each hold streamHold connections (one
// echo on each); the growth of each process's VmRSS is divided by the
// connections held.
func (b *bench) runStreamHold(ctx context.Context, rep int) error {
	var errs []error
	n := b.sz.streamHold
	for _, col := range rotate([]string{colDaemon, colBase}, rep) {
		var addr string
		var pids []int
		var stop func()
		if col == colDaemon {
			d, err := startDaemon(ctx, b.daemonBin, b.tmp, fmt.Sprintf("j%d", rep), nil, "")
			if err != nil {
				errs = append(errs, fmt.Errorf("j %s: %w", col, err))
				continue
			}
			h, err := b.startHandler(ctx, d, n)
			if err != nil {
				_ = d.stop()
				errs = append(errs, fmt.Errorf("j %s: handler: %w", col, err))
				continue
			}
			addr, pids = h.addr, []int{d.pid(), h.pid()}
			stop = func() {
				if err := h.closeStdin(30 * time.Second); err != nil {
					b.logf("j handler: %v", err)
				}
				if err := d.stop(); err != nil {
					b.logf("j daemon: %v", err)
				}
			}
		} else {
			s, err := startGoServer(ctx, b.self, nil, b.log, "echo")
			if err != nil {
				errs = append(errs, fmt.Errorf("j %s: %w", col, err))
				continue
			}
			addr, pids = s.addr, []int{s.pid()}
			stop = func() { _ = s.closeStdin(10 * time.Second) }
		}
		h, err := b.holdHook(ctx, addr, n, pids, nil)
		if err == nil {
			h.release()
		}
		stop()
		if err != nil {
			errs = append(errs, fmt.Errorf("j %s: %w", col, err))
			continue
		}
		total := 0.0
		for _, v := range h.perConn {
			total += v
		}
		b.record("j", col, rep, total, math.NaN())
		if col == colDaemon {
			b.record("jd", col, rep, h.perConn[0], math.NaN())
			b.record("jh", col, rep, h.perConn[1], math.NaN())
		} else { // the same baseline for the daemon's and the handler's rows
			b.metrics["jd"].vals[col][rep] = total
			b.metrics["jh"].vals[col][rep] = total
		}
		if b.cfg.progress {
			for i, pid := range pids {
				b.logf("            %s pid %d: VmRSS %d KiB before, %d KiB with %d connections held", col, pid, h.rss0[i], h.rss1[i], n)
			}
		}
	}
	return errors.Join(errs...)
}
