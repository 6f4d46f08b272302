package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/listenerd/listenerd/internal/events"
)

// Defaults of Options.
const (
	DefaultMaxPending = 1024
	DefaultAckTimeout = 10 * time.Second
	batchSize         = 512
	maxBackoff        = 2 * time.Second
)

// Options configure a Publisher.
type Options struct {
	Host       string        // the subjects' host token (CheckToken)
	Replicas   int           // the stream's replicas when it is created; 0: 1
	MaxAge     time.Duration // how long the stream keeps events; 0: DefaultMaxAge
	Duplicates time.Duration // the stream's duplicate window; 0: DefaultDuplicates
	MaxPending int           // publishes awaiting their ack at most; 0: DefaultMaxPending
	AckTimeout time.Duration // a publish not acknowledged by then is retried; 0: DefaultAckTimeout
	// Encode turns an event into its payload (the API's Event as
	// protojson).
	Encode func(*events.Event) ([]byte, error)
	Log    *slog.Logger
}

// StreamConfig is the stream the publisher creates when it is missing.
func (o Options) StreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:       Stream,
		Subjects:   []string{Prefix + ".>"},
		Storage:    jetstream.FileStorage,
		Replicas:   max(o.Replicas, 1),
		MaxAge:     cmp(o.MaxAge, DefaultMaxAge),
		Duplicates: cmp(o.Duplicates, DefaultDuplicates),
	}
}

func cmp(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Stats are the publisher's counters, for metrics.
type Stats struct {
	Published uint64 // publishes sent, repeats after a failure included
	Acked     uint64 // publishes JetStream acknowledged
	Failed    uint64 // publishes that failed (no ack in time, disconnected, refused)
	Gaps      uint64 // gap records published: events the history lost before they went out
	Lag       uint64 // events recorded and not yet acknowledged
}

// Publisher publishes the bus's events to JetStream, in order, from its
// own watcher of the history: it never holds up the listeners. It keeps
// the last sequence JetStream acknowledged (every event up to it is in
// the stream), and after a failure, a cut for falling behind, or a
// reconnect, goes on from there. What the history no longer holds by
// then becomes one gap record.
type Publisher struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	bus  *events.Bus
	opts Options
	log  *slog.Logger

	acked                            atomic.Uint64 // every event up to it is in the stream, or in a gap record
	published, ackedN, failed, gapsN atomic.Uint64

	cancel context.CancelFunc
	// stopping is done once Stop is called: publish the rest of the
	// history, then return.
	stopping context.Context
	stop     context.CancelFunc
	done     chan struct{}
}

// Start starts publishing bus's events on nc, which the caller closes
// after Stop.
func Start(nc *nats.Conn, bus *events.Bus, opts Options) (*Publisher, error) {
	if err := CheckToken("--host-name", opts.Host); err != nil {
		return nil, err
	}
	if opts.Encode == nil {
		return nil, errors.New("fleet: no encoder")
	}
	opts.MaxPending = cmpInt(opts.MaxPending, DefaultMaxPending)
	opts.AckTimeout = cmp(opts.AckTimeout, DefaultAckTimeout)
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(opts.MaxPending),
		jetstream.WithPublishAsyncTimeout(opts.AckTimeout))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopping, stop := context.WithCancel(ctx)
	p := &Publisher{nc: nc, js: js, bus: bus, opts: opts, log: opts.Log.With("nats_host", opts.Host),
		cancel: cancel, stopping: stopping, stop: stop, done: make(chan struct{})}
	go p.run(ctx)
	return p, nil
}

func cmpInt(n, def int) int {
	if n > 0 {
		return n
	}
	return def
}

// Stats returns the counters.
func (p *Publisher) Stats() Stats {
	acked := p.acked.Load()
	var lag uint64
	if h := p.bus.Head(); h > acked {
		lag = h - acked
	}
	return Stats{Published: p.published.Load(), Acked: p.ackedN.Load(), Failed: p.failed.Load(),
		Gaps: p.gapsN.Load(), Lag: lag}
}

// Acked returns the last sequence JetStream acknowledged: every event up
// to it is in the stream (or named by a gap record).
func (p *Publisher) Acked() uint64 { return p.acked.Load() }

// Stop publishes what the history holds beyond the last acknowledged
// sequence (call it after the listeners closed, so that their last events
// go too) and waits for the acknowledgements, for up to timeout; then it
// gives up on the rest. Nothing of the publisher runs after it returns.
func (p *Publisher) Stop(timeout time.Duration) {
	p.stop()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.log.Warn("fleet: events left unpublished at shutdown", "acked", p.acked.Load(), "head", p.bus.Head())
	}
	p.cancel()
	<-p.done
}

// run publishes until Stop: one watch of the history after another, each
// from the last acknowledged sequence.
func (p *Publisher) run(ctx context.Context) {
	defer close(p.done)
	defer p.cancel()
	backoff := 100 * time.Millisecond
	failing := false
	located := false
	for ctx.Err() == nil {
		err := p.ensureStream(ctx)
		if err == nil && !located {
			err = p.locate(ctx)
			located = err == nil
		}
		var progressed bool
		if err == nil {
			progressed, err = p.watch(ctx)
		}
		if errors.Is(err, events.ErrClosed) || p.stopping.Err() != nil {
			// The listeners are closing: their events follow, then Stop.
			<-p.stopping.Done()
			p.drain(ctx)
			return
		}
		if err == nil || progressed {
			backoff, failing = 100*time.Millisecond, false
		}
		if err == nil {
			continue
		}
		if !failing {
			failing = true
			p.log.Warn("fleet: publishing to NATS failed; resuming from the last acknowledged event", "err", err,
				"acked", p.acked.Load())
		}
		select {
		case <-ctx.Done():
			return
		case <-p.stopping.Done():
			p.drain(ctx)
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// ensureStream creates the stream when it is missing; one that exists is
// left as its owner set it.
func (p *Publisher) ensureStream(ctx context.Context) error {
	if !p.nc.IsConnected() {
		return nats.ErrDisconnected
	}
	ctx, cancel := context.WithTimeout(ctx, p.opts.AckTimeout)
	defer cancel()
	_, err := p.js.Stream(ctx, Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = p.js.CreateStream(ctx, p.opts.StreamConfig())
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("stream %s: %w", Stream, err)
	}
	return nil
}

// locate starts after the last event of this boot that the stream holds:
// a daemon upgraded in place keeps its boot id and history, and goes on
// where the old process stopped rather than from the history's start. A
// new boot finds none and starts from its first event.
func (p *Publisher) locate(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, p.opts.AckTimeout)
	defer cancel()
	st, err := p.js.Stream(ctx, Stream)
	if err != nil {
		return err
	}
	m, err := st.GetLastMsgForSubject(ctx, HostSubjects(p.opts.Host))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var last uint64
	if strings.HasSuffix(m.Subject, "."+GapToken) {
		if g, err := ParseGap(m.Data); err == nil && g.BootID == p.bus.BootID() {
			last = g.To
		}
	} else if boot, seq, ok := ParseMsgID(m.Header.Get(jetstream.MsgIDHeader)); ok && boot == p.bus.BootID() {
		last = seq
	}
	if last > p.acked.Load() && last <= p.bus.Head() {
		p.acked.Store(last)
		p.log.Info("fleet: resuming this boot's events after the stream's last", "seq", last)
	}
	return nil
}

// item is a publish awaiting its ack, or with no future, the sequence
// reached once every publish before it is acknowledged.
type item struct {
	seq uint64
	f   jetstream.PubAckFuture
}

// flight is one run of publishes: a reaper goroutine takes their acks in
// order, advancing acked while none has failed. The first failure cancels
// the run.
type flight struct {
	p      *Publisher
	ctx    context.Context
	cancel context.CancelCauseFunc
	items  chan item
	done   chan struct{}
}

func (p *Publisher) newFlight(ctx context.Context) *flight {
	fctx, cancel := context.WithCancelCause(ctx)
	f := &flight{p: p, ctx: fctx, cancel: cancel, items: make(chan item, p.opts.MaxPending+batchSize), done: make(chan struct{})}
	go f.reap(ctx)
	return f
}

func (f *flight) reap(ctx context.Context) {
	defer close(f.done)
	failed := false
	for it := range f.items {
		if it.f == nil {
			if !failed {
				f.p.acked.Store(max(f.p.acked.Load(), it.seq))
			}
			continue
		}
		select {
		case <-it.f.Ok():
			f.p.ackedN.Add(1)
			if !failed {
				f.p.acked.Store(max(f.p.acked.Load(), it.seq))
			}
		case err := <-it.f.Err():
			f.p.failed.Add(1)
			if !failed {
				failed = true
				f.cancel(fmt.Errorf("publish of seq %d: %w", it.seq, err))
			}
		case <-ctx.Done(): // Stop gave up: the acks no longer matter
			failed = true
			f.cancel(ctx.Err())
		}
	}
}

// end waits for every ack of the flight (each comes, or fails, within the
// ack timeout) and returns why it failed, if it did.
func (f *flight) end() error {
	close(f.items)
	<-f.done
	err := context.Cause(f.ctx)
	f.cancel(nil)
	return err
}

// send publishes evs asynchronously, then marks through as reached once
// they are acknowledged. It stops at the first failure.
func (f *flight) send(evs []events.Event, through uint64) error {
	p := f.p
	boot := p.bus.BootID()
	for i := range evs {
		e := &evs[i]
		data, err := p.opts.Encode(e)
		if err != nil { // never so for the daemon's own events: skip it, loudly
			p.log.Error("fleet: event not encodable; skipped", "seq", e.Seq, "err", err)
			continue
		}
		m := &nats.Msg{Subject: Subject(p.opts.Host, e.Listener, e.Kind), Data: data, Header: nats.Header{}}
		m.Header.Set(jetstream.MsgIDHeader, MsgID(boot, e.Seq))
		fut, err := f.publish(m)
		if err != nil {
			p.failed.Add(1)
			f.cancel(fmt.Errorf("publish of seq %d: %w", e.Seq, err))
			return context.Cause(f.ctx)
		}
		p.published.Add(1)
		select {
		case f.items <- item{seq: e.Seq, f: fut}:
		case <-f.ctx.Done():
			return context.Cause(f.ctx)
		}
	}
	select {
	case f.items <- item{seq: through}:
	case <-f.ctx.Done():
		return context.Cause(f.ctx)
	}
	return nil
}

// publish sends m, waiting while MaxPending publishes await their acks.
func (f *flight) publish(m *nats.Msg) (jetstream.PubAckFuture, error) {
	for {
		fut, err := f.p.js.PublishMsgAsync(m)
		if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			return fut, err
		}
		if err := f.ctx.Err(); err != nil {
			return nil, context.Cause(f.ctx)
		}
	}
}

// watch publishes from a watcher of the history, from the last
// acknowledged sequence, until it fails, is cut, or the bus closes.
// progressed reports that some publish was acknowledged.
func (p *Publisher) watch(ctx context.Context) (progressed bool, err error) {
	start := p.acked.Load()
	after := start
	w, _, err := p.bus.Watch(events.Filter{}, &after)
	var re *events.RangeError
	if errors.As(err, &re) && after+1 < re.Oldest {
		return true, p.gap(ctx, after+1, re.Oldest-1)
	}
	if err != nil {
		return false, err
	}
	defer w.Close()
	f := p.newFlight(ctx)
	buf := make([]events.Event, 0, batchSize)
	next, cancel := context.WithCancel(f.ctx) // Stop ends the watch; the acks are still awaited
	defer cancel()
	defer context.AfterFunc(p.stopping, cancel)()
	for {
		evs, through, werr := w.NextBatch(next, buf, 0)
		if len(evs) > 0 || werr == nil {
			if err := f.send(evs, through); err != nil {
				break
			}
		}
		if werr != nil {
			if f.ctx.Err() == nil { // cut for falling behind (it resumes), or the bus closed
				err = werr
			}
			break
		}
	}
	ferr := f.end()
	progressed = p.acked.Load() > start
	if errors.Is(err, events.ErrSlow) {
		return progressed, nil
	}
	if err == nil {
		err = ferr
	}
	if err == nil {
		err = ctx.Err()
	}
	return progressed, err
}

// gap publishes the record of events the history lost before they went
// out, and moves past them.
func (p *Publisher) gap(ctx context.Context, from, to uint64) error {
	g := &Gap{Host: p.opts.Host, BootID: p.bus.BootID(), From: from, To: to, Time: time.Now().UTC()}
	data, err := json.Marshal(GapRecord{Gap: g})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, p.opts.AckTimeout)
	defer cancel()
	m := &nats.Msg{Subject: GapSubject(p.opts.Host), Data: data, Header: nats.Header{}}
	m.Header.Set(jetstream.MsgIDHeader, GapMsgID(g))
	p.published.Add(1)
	if _, err := p.js.PublishMsg(ctx, m); err != nil {
		p.failed.Add(1)
		return fmt.Errorf("gap record %d-%d: %w", from, to, err)
	}
	p.ackedN.Add(1)
	p.gapsN.Add(1)
	p.acked.Store(max(p.acked.Load(), to))
	p.log.Warn("fleet: events lost before they reached NATS; gap record published", "from", from, "to", to)
	return nil
}

// drain publishes what the history holds after the last acknowledged
// sequence, at shutdown, until it is all acknowledged or a publish fails.
func (p *Publisher) drain(ctx context.Context) {
	for range 1 << 20 { // bounded: each round publishes or returns
		if ctx.Err() != nil || !p.nc.IsConnected() {
			return
		}
		after := p.acked.Load()
		evs, err := p.bus.Since(after, batchSize*8)
		var re *events.RangeError
		if errors.As(err, &re) {
			if p.gap(ctx, after+1, re.Oldest-1) != nil {
				return
			}
			continue
		}
		if err != nil || len(evs) == 0 {
			return
		}
		f := p.newFlight(ctx)
		var keep []events.Event
		for _, e := range evs {
			if e.Kind != events.KindConnectionData { // as the watcher's filter
				keep = append(keep, e)
			}
		}
		serr := f.send(keep, evs[len(evs)-1].Seq)
		if f.end() != nil || serr != nil {
			return
		}
	}
}
