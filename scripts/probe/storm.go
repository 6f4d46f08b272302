package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// The client's outcomes of one connection.
const (
	verified = iota // echo or forward: the bytes came back
	accepted        // discard: written, and the daemon ended its side after ours
	eof             // ended before any byte came back (a rejection, for echo)
	reset           // ECONNRESET or EPIPE
	refused         // ECONNREFUSED
	timedOut        // the guard passed
	otherErr        // anything else (a wrong echo included)
	nOutcomes
)

var outcomeNames = [nOutcomes]string{"verified", "accepted", "eof", "reset", "refused", "timeout", "other"}

// target is one listener of the storm, with its clients' outcomes.
type target struct {
	name     string
	kind     string // echo, discard, forward, closed
	id, addr string
	upstream *target // forward's upstream
	out      [nOutcomes]atomic.Int64
	sent     atomic.Int64 // bytes written by clients that completed
	lastErr  atomic.Value
}

// stormState is what phase 1 sets up and phases 3, 6 and 8 use.
type stormState struct {
	targets []*target
	w       *watcher
	cancelW context.CancelFunc
	wDone   chan struct{}
}

const payloadSize = 16

// storm is phase 1.
func (p *probe) stormPhase(ctx context.Context, r *result) error {
	d := p.main
	create := func(name, kind string, spec *listenerdv1.ListenerSpec) (*target, error) {
		spec.Backlog = ptr(uint32(4096))
		resp, err := d.c.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: name, Spec: spec})
		if err != nil {
			return nil, fmt.Errorf("create %s: %w", name, err)
		}
		l := resp.GetListener()
		return &target{name: name, kind: kind, id: l.GetId(), addr: l.GetStatus().GetBoundAddress()}, nil
	}
	echo := func() *listenerdv1.Handler {
		return &listenerdv1.Handler{Kind: &listenerdv1.Handler_Echo{Echo: &listenerdv1.EchoHandler{}}}
	}
	st := &stormState{}
	p.st = st
	// The watcher first, from sequence 0, so it sees every event.
	wctx, cancel := context.WithCancel(context.Background())
	st.cancelW, st.wDone = cancel, make(chan struct{})
	st.w = newWatcher(d.c, p.cfg.events/uint64(max(1, p.cfg.resumes+1)), p.cfg.resumes)
	go func() { defer close(st.wDone); st.w.run(wctx) }()

	var ts []*target
	for i := range 3 {
		t, err := create(fmt.Sprintf("echo-%d", i), "echo", &listenerdv1.ListenerSpec{Handler: echo()})
		if err != nil {
			return err
		}
		ts = append(ts, t)
	}
	// A low limit: concurrent clients are rejected (accepted and closed).
	lim, err := create("echo-limited", "echo", &listenerdv1.ListenerSpec{Handler: echo(), Limits: &listenerdv1.Limits{MaxConnections: ptr(uint32(2))}})
	if err != nil {
		return err
	}
	ts = append(ts, lim)
	for i := range 3 {
		t, err := create(fmt.Sprintf("discard-%d", i), "discard", &listenerdv1.ListenerSpec{})
		if err != nil {
			return err
		}
		ts = append(ts, t)
	}
	for i := range 2 {
		up, err := create(fmt.Sprintf("upstream-%d", i), "upstream", &listenerdv1.ListenerSpec{Handler: echo()})
		if err != nil {
			return err
		}
		fw, err := create(fmt.Sprintf("forward-%d", i), "forward", &listenerdv1.ListenerSpec{Handler: &listenerdv1.Handler{
			Kind: &listenerdv1.Handler_Forward{Forward: &listenerdv1.ForwardHandler{Upstream: up.addr}}}})
		if err != nil {
			return err
		}
		fw.upstream = up
		ts = append(ts, fw, up)
	}
	// A closed listener's port: its connections are refused.
	closed, err := create("closed", "closed", &listenerdv1.ListenerSpec{})
	if err != nil {
		return err
	}
	if _, err := d.c.CloseListener(ctx, &listenerdv1.CloseListenerRequest{Id: closed.id, Force: true}); err != nil {
		return err
	}
	ts = append(ts, closed)
	st.targets = ts
	var dial []*target // what clients pick from: upstreams are reached through forwards
	for _, t := range ts {
		if t.kind != "upstream" && t.kind != "closed" {
			dial = append(dial, t)
		}
	}
	pick := func(i int64) *target {
		if i%100 == 99 {
			return closed // one in a hundred
		}
		return dial[int(i)%len(dial)]
	}

	start := time.Now()
	n := p.load(ctx, int64(p.cfg.connections), p.cfg.stormTime, pick, nil)
	rate := float64(n) / time.Since(start).Seconds()
	r.count("connections", n)
	r.count("conn/s", int(rate))
	if n < int64(p.cfg.connections) {
		r.note("the storm stopped at %d of %d connections (--storm-time %v or --timeout)", n, p.cfg.connections, p.cfg.stormTime)
	}
	var tot [nOutcomes]int64
	for _, t := range ts {
		for o := range nOutcomes {
			tot[o] += t.out[o].Load()
		}
	}
	for o := range nOutcomes {
		r.count(outcomeNames[o], tot[o])
	}
	if err := p.quiesce(ctx); err != nil {
		return err
	}
	p.compare(ctx, r, ts)
	return nil
}

// load makes n connections (at most, and for at most limit) from the
// configured number of client goroutines, to pick(i) for the i-th, and
// returns how many it made. When stop is not nil, it ends early once stop
// says so.
func (p *probe) load(ctx context.Context, n int64, limit time.Duration, pick func(int64) *target, stop func() bool) int64 {
	var next, done atomic.Int64
	deadline := time.Now().Add(limit)
	var wg sync.WaitGroup
	for range p.cfg.clients {
		wg.Go(func() {
			msg := make([]byte, payloadSize)
			buf := make([]byte, payloadSize)
			for {
				i := next.Add(1) - 1
				if i >= n || ctx.Err() != nil || time.Now().After(deadline) || (stop != nil && i%256 == 0 && stop()) {
					return
				}
				t := pick(i)
				copy(msg, fmt.Sprintf("%016d", i))
				o := connect(t, msg, buf)
				t.out[o].Add(1)
				if o == verified || o == accepted {
					t.sent.Add(payloadSize)
				}
				done.Add(1)
			}
		})
	}
	progress := time.NewTicker(10 * time.Second)
	defer progress.Stop()
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	for {
		select {
		case <-finished:
			return done.Load()
		case <-progress.C:
			p.logf("  %d connections, watcher at %d, %s", done.Load(), p.st.w.last.Load(), p.main.rss())
		}
	}
}

// connect makes one connection to t and says how it went.
func connect(t *target, msg, buf []byte) int {
	c, err := net.DialTimeout("tcp", t.addr, guard)
	if err != nil {
		return classify(t, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(guard))
	tc := c.(*net.TCPConn)
	switch t.kind {
	case "echo", "forward":
		if _, err := tc.Write(msg); err != nil {
			return classify(t, err)
		}
		if _, err := io.ReadFull(tc, buf); err != nil {
			if errors.Is(err, io.EOF) {
				return eof
			}
			return classify(t, err)
		}
		if !bytes.Equal(buf, msg) {
			t.lastErr.Store(fmt.Sprintf("echo %q, sent %q", buf, msg))
			return otherErr
		}
		if err := tc.CloseWrite(); err != nil {
			return classify(t, err)
		}
		if n, err := tc.Read(buf); n != 0 || !errors.Is(err, io.EOF) {
			t.lastErr.Store(fmt.Sprintf("after the echo: %d bytes, %v", n, err))
			return otherErr
		}
		return verified
	default: // discard, closed
		if _, err := tc.Write(msg); err != nil {
			return classify(t, err)
		}
		if err := tc.CloseWrite(); err != nil {
			return classify(t, err)
		}
		n, err := tc.Read(buf)
		if n == 0 && errors.Is(err, io.EOF) {
			return accepted
		}
		if err == nil {
			t.lastErr.Store(fmt.Sprintf("discard sent back %d bytes", n))
			return otherErr
		}
		return classify(t, err)
	}
}

func classify(t *target, err error) int {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return refused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return reset
	case errors.As(err, &ne) && ne.Timeout():
		t.lastErr.Store(err.Error())
		return timedOut
	}
	t.lastErr.Store(err.Error())
	return otherErr
}

// quiesce waits until no connection is open in the first daemon and the
// watcher has seen every event it published.
func (p *probe) quiesce(ctx context.Context) error {
	d, w := p.main, p.st.w
	deadline := time.Now().Add(2 * guard)
	for {
		head, err := d.metric("listenerd_events_published_total")
		if err != nil {
			return err
		}
		ds, err := d.c.GetDaemonStatus(ctx, &listenerdv1.GetDaemonStatusRequest{})
		if err != nil {
			return err
		}
		again, err := d.metric("listenerd_events_published_total")
		if err != nil {
			return err
		}
		if ds.GetStatus().GetConnections() == 0 && head == again && w.last.Load() >= uint64(head) {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("not quiet after %v: %d connections open, watcher at %d of %v (%v)",
				2*guard, ds.GetStatus().GetConnections(), w.last.Load(), head, w.err())
		}
		time.Sleep(50 * time.Millisecond) // polling the daemon's counters
	}
}

// compare checks each target's client outcomes against the daemon's
// counts and the watcher's events.
func (p *probe) compare(ctx context.Context, r *result, ts []*target) {
	w := p.st.w
	ev := w.counts()
	for _, t := range ts {
		o := func(k int) int64 { return t.out[k].Load() }
		if t.kind == "closed" {
			if bad := o(accepted) + o(eof) + o(reset) + o(timedOut) + o(otherErr); bad > 0 {
				r.fail("%s (closed port): %d connections not refused (last: %v)", t.name, bad, t.lastErr.Load())
			}
			r.count("refused (closed port)", o(refused))
			continue
		}
		resp, err := p.main.c.GetListener(ctx, &listenerdv1.GetListenerRequest{Id: t.id})
		if err != nil {
			r.fail("%s: get: %v", t.name, err)
			continue
		}
		s := resp.GetListener().GetStatus()
		acc, rej := int64(s.GetAcceptedConnections()), int64(s.GetRejectedConnections())
		var wantAcc, wantRej, wantIn int64
		switch t.kind {
		case "echo", "forward":
			wantAcc, wantRej, wantIn = o(verified), o(eof)+o(reset), t.sent.Load()
		case "discard":
			wantAcc, wantRej, wantIn = o(accepted), o(eof)+o(reset), t.sent.Load()
		case "upstream": // one connection from each forward's accepted one
			for _, f := range ts {
				if f.upstream == t {
					wantAcc, wantIn = f.out[verified].Load(), f.sent.Load()
				}
			}
		}
		if t.kind != "upstream" {
			if bad := o(refused) + o(timedOut) + o(otherErr); bad > 0 {
				r.fail("%s: %d refused, %d timed out, %d other (last: %v)", t.name, o(refused), o(timedOut), o(otherErr), t.lastErr.Load())
			}
		}
		if acc != wantAcc {
			r.fail("%s: daemon accepted %d, clients saw %d", t.name, acc, wantAcc)
		}
		if rej != wantRej {
			r.fail("%s: daemon rejected %d, clients saw %d ended early or reset", t.name, rej, wantRej)
		}
		if int64(s.GetBytesIn()) != wantIn {
			r.fail("%s: daemon read %d bytes, clients sent %d", t.name, s.GetBytesIn(), wantIn)
		}
		c := ev[t.id]
		if c.opened != acc || c.closed != acc || c.rejected != rej {
			r.fail("%s: events opened %d, closed %d, rejected %d; daemon accepted %d, rejected %d",
				t.name, c.opened, c.closed, c.rejected, acc, rej)
		}
		if t.kind == "echo" && t.name != "echo-limited" && rej != 0 {
			r.fail("%s: %d rejected without a limit", t.name, rej)
		}
	}
	for _, t := range ts {
		if t.name == "echo-limited" {
			r.count("rejected (limit 2)", t.out[eof].Load()+t.out[reset].Load())
		}
	}
}

// counts of one listener's connection events.
type evCounts struct{ opened, closed, rejected int64 }

// watcher follows every event of a daemon from sequence 0, resuming with
// after_sequence when its stream ends (a cut, or its own cancel every
// `every` events, up to `resumes` times), and checks the sequence has no
// gap and no duplicate.
type watcher struct {
	c       listenerdv1.ListenerServiceClient
	every   uint64
	resumes int

	last   atomic.Uint64 // last sequence seen
	mu     sync.Mutex
	per    map[string]*evCounts
	total  int64
	gaps   int64
	dups   int64
	cuts   int // streams the daemon ended (RESOURCE_EXHAUSTED)
	done   int // resumes of its own
	lastEr error
	firstG string
}

func newWatcher(c listenerdv1.ListenerServiceClient, every uint64, resumes int) *watcher {
	return &watcher{c: c, every: max(every, 1), resumes: resumes, per: map[string]*evCounts{}}
}

func (w *watcher) err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastEr
}

func (w *watcher) counts() map[string]evCounts {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string]evCounts{}
	for k, v := range w.per {
		out[k] = *v
	}
	return out
}

// run watches until ctx ends. Each stream starts after the last sequence
// seen (0 at first); the daemon replays the rest from its history.
func (w *watcher) run(ctx context.Context) {
	var boot string
	for attempt := 0; ctx.Err() == nil && attempt < 10_000; attempt++ {
		sctx, cancel := context.WithCancel(ctx)
		s, err := w.c.WatchEvents(sctx, &listenerdv1.WatchEventsRequest{AfterSequence: ptr(w.last.Load()), BootId: boot})
		if err != nil {
			cancel()
			w.setErr(err)
			return
		}
		own := false
		for {
			resp, err := s.Recv()
			if err != nil {
				if !own && ctx.Err() == nil {
					if status.Code(err) == codes.ResourceExhausted {
						w.mu.Lock()
						w.cuts++
						w.mu.Unlock()
					} else {
						w.setErr(err)
						cancel()
						return
					}
				}
				break
			}
			if boot == "" {
				boot = resp.GetBootId()
			}
			for _, e := range resp.GetEvents() {
				w.see(e)
			}
			// Drop the stream and resume, every `every` events.
			w.mu.Lock()
			due := w.done < w.resumes && w.last.Load() >= uint64(w.done+1)*w.every
			if due {
				w.done++
			}
			w.mu.Unlock()
			if due {
				own = true
				cancel()
			}
		}
		cancel()
	}
}

func (w *watcher) setErr(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lastEr = err
}

func (w *watcher) see(e *listenerdv1.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	seq, last := e.GetSequence(), w.last.Load()
	switch {
	case seq <= last:
		w.dups++
		return
	case seq != last+1:
		w.gaps++
		if w.firstG == "" {
			w.firstG = fmt.Sprintf("after %d came %d", last, seq)
		}
	}
	w.last.Store(seq)
	w.total++
	c := w.per[e.GetListenerId()]
	if c == nil {
		c = &evCounts{}
		w.per[e.GetListenerId()] = c
	}
	switch e.GetKind().(type) {
	case *listenerdv1.Event_ConnectionOpened:
		c.opened++
	case *listenerdv1.Event_ConnectionClosed:
		c.closed++
	case *listenerdv1.Event_ConnectionRejected:
		c.rejected++
	}
}

// events is phase 3: short connections until the daemon has published the
// target number of events, then the watcher's sequence is checked.
func (p *probe) events(ctx context.Context, r *result) error {
	if p.st == nil {
		return errors.New("phase 3 needs phase 1")
	}
	d, w := p.main, p.st.w
	var echo *target
	for _, t := range p.st.targets {
		if t.name == "echo-0" {
			echo = t
		}
	}
	before := echo.out[verified].Load()
	reached := func() bool {
		head, err := d.metric("listenerd_events_published_total")
		return err != nil || uint64(head) >= p.cfg.events
	}
	n := p.load(ctx, 1<<62, p.cfg.stormTime, func(int64) *target { return echo }, reached)
	if err := p.quiesce(ctx); err != nil {
		return err
	}
	head, err := d.metric("listenerd_events_published_total")
	if err != nil {
		return err
	}
	hist, _ := d.metric("listenerd_history_events")
	r.count("connections", n)
	r.count("events published", uint64(head))
	w.mu.Lock()
	r.count("events seen", w.total)
	r.count("resumes", w.done)
	r.count("cuts", w.cuts)
	r.count("gaps", w.gaps)
	r.count("duplicates", w.dups)
	if w.gaps > 0 || w.dups > 0 {
		r.fail("%d gaps (first: %s), %d duplicates", w.gaps, w.firstG, w.dups)
	}
	if uint64(w.total) != uint64(head) {
		r.fail("watcher saw %d events, daemon published %d", w.total, uint64(head))
	}
	if w.done < p.cfg.resumes {
		r.fail("watcher resumed %d times, not %d", w.done, p.cfg.resumes)
	}
	w.mu.Unlock()
	r.count("history holds", int64(hist))
	if uint64(head) < p.cfg.events {
		r.note("stopped at %d of %d events (--storm-time or --timeout)", uint64(head), p.cfg.events)
	}
	if got := echo.out[verified].Load() - before; got != n {
		r.fail("echo-0: %d of %d connections verified (last error %v)", got, n, echo.lastErr.Load())
	}
	p.compare(ctx, r, p.st.targets) // the storm's counts still hold with the loop's added
	return nil
}
