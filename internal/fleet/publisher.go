package fleet

import (
	"bytes"
	stdcmp "cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
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
	// publishLinger is how long the publisher lets events gather after a
	// batch of less than half batchSize: under load it publishes a batch
	// every publishLinger or so, and the first event after a quiet spell
	// goes out at once.
	publishLinger = 5 * time.Millisecond
	// verifyBatch is how many messages verify reads a request.
	verifyBatch = 512
	retryWait   = 100 * time.Millisecond
)

// Options configure a Publisher.
type Options struct {
	Host       string        // the subjects' host token (CheckToken)
	Replicas   int           // the stream's replicas when it is created; 0: 1
	MaxAge     time.Duration // how long the stream keeps events; 0: DefaultMaxAge
	Duplicates time.Duration // the stream's duplicate window; 0: DefaultDuplicates
	MaxPending int           // publishes awaiting their ack at most; 0: DefaultMaxPending
	AckTimeout time.Duration // a publish not acknowledged by then is retried; 0: DefaultAckTimeout
	// RetryWait is the wait before the first retry after a failure,
	// doubled at each failure that follows up to 20 times it; a reconnect
	// to NATS ends the wait at once. 0: 100 ms.
	RetryWait time.Duration
	// Pack is how many events of one subject, published together, one
	// message holds at most (about 16 KiB at most too); 1: one event a
	// message. 0: DefaultPack.
	Pack int
	// Encode appends an event's payload (the API's Event as protojson)
	// to dst, with no newline in it.
	Encode func(dst []byte, e *events.Event) ([]byte, error)
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
	Published    uint64 // publishes (messages) sent, repeats after a failure included
	Events       uint64 // events in them
	Acked        uint64 // publishes JetStream acknowledged
	Failed       uint64 // publishes that failed (no ack in time, disconnected, refused)
	FailedEvents uint64 // events in them
	Gaps         uint64 // gap records published: events the history lost before they went out
	Lag          uint64 // events recorded and not yet acknowledged
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

	acked                                     atomic.Uint64 // every event up to it is in the stream, or in a gap record
	published, eventsN, ackedN, failed, gapsN atomic.Uint64
	failedEvents                              atomic.Uint64

	// the run goroutine's own
	groups  map[subjectKey]*group // the messages being filled, by subject
	filling []*group              // those given events in this send
	// stored holds the events past acked that JetStream acknowledged
	// after an earlier publish of their flight failed: the next flight
	// does not publish them again (a copy sent after the stream's
	// duplicate window would be stored twice).
	stored map[uint64]bool
	// uncertain holds the publishes that failed flights left unanswered,
	// by their first event's sequence: JetStream may have stored them
	// (the ack was lost). The next flight sends each again as it was, so
	// that its message id stands for the same events: a copy sent within
	// the stream's duplicate window is dropped by JetStream; past half of
	// it, verify reads what the stream holds first. uncertainFrom is a
	// stream sequence before any of them, uncertainSince when the first of
	// their flights began.
	uncertain      map[uint64]*outMsg
	uncertainFrom  uint64
	uncertainSince time.Time
	// lastStored is the highest stream sequence known before the next
	// flight starts (from acks and the stream's state): what the flight
	// stores comes after it.
	lastStored uint64
	window     time.Duration // the stream's duplicate window
	created    time.Time     // the stream's creation, to tell a stream made again

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
	opts.RetryWait = cmp(opts.RetryWait, retryWait)
	opts.Pack = cmpInt(opts.Pack, DefaultPack)
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	js, err := jetstream.New(nc)
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
	return Stats{Published: p.published.Load(), Events: p.eventsN.Load(), Acked: p.ackedN.Load(),
		Failed: p.failed.Load(), FailedEvents: p.failedEvents.Load(), Gaps: p.gapsN.Load(), Lag: lag}
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
	case <-p.done: // all published, or NATS is not reachable
	case <-t.C:
	}
	p.cancel()
	<-p.done
	if acked, head := p.acked.Load(), p.bus.Head(); acked < head {
		p.log.Warn("fleet: events left unpublished at shutdown", "acked", acked, "head", head)
	}
}

// run publishes until Stop: one watch of the history after another, each
// from the last acknowledged sequence.
func (p *Publisher) run(ctx context.Context) {
	defer close(p.done)
	defer p.cancel()
	backoff := p.opts.RetryWait
	failing := false
	located := false
	// A reconnect ends the wait before a retry: the events missed while
	// NATS was away go out as soon as it answers again.
	reconnected := p.nc.StatusChanged(nats.CONNECTED)
	defer p.nc.RemoveStatusListener(reconnected)
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
			backoff, failing = p.opts.RetryWait, false
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
		case <-reconnected:
			continue
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 20*p.opts.RetryWait)
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
	st, err := p.js.Stream(ctx, Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		st, err = p.js.CreateStream(ctx, p.opts.StreamConfig())
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			st, err = p.js.Stream(ctx, Stream)
		}
	}
	if err != nil {
		return fmt.Errorf("stream %s: %w", Stream, err)
	}
	info := st.CachedInfo()
	if !info.Created.Equal(p.created) {
		// A stream of its own (at start, or made again since): its
		// sequences start anew, and it holds nothing left unanswered
		// before it.
		p.created, p.lastStored, p.uncertainFrom = info.Created, 0, 0
	}
	p.lastStored = max(p.lastStored, info.State.LastSeq)
	p.window = info.Config.Duplicates
	return nil
}

// needVerify says whether the publishes left unanswered must be looked up
// in the stream before they are sent again: some are neither acknowledged
// since nor known stored, and their first flight began more than half the
// duplicate window ago (JetStream counts the window from when it stored
// a message, after that).
func (p *Publisher) needVerify() bool {
	for first, m := range p.uncertain {
		if m.last() <= p.acked.Load() || p.stored[first] {
			delete(p.uncertain, first)
		}
	}
	if len(p.uncertain) == 0 {
		p.uncertain = nil
		return false
	}
	// The copies go out up to a flight's wait for room (an ack timeout)
	// after this: count it, and as much again for their way to the server.
	return time.Since(p.uncertainSince)+2*p.opts.AckTimeout >= p.window/2
}

// verify reads this host's messages stored after uncertainFrom and marks
// the unanswered publishes it finds there as stored, so that the next
// flight does not send them again: past the duplicate window JetStream
// would store a copy. What it does not find was not stored; it is sent
// again. It reads through a consumer of its own (on the stream's leader,
// headers only, in batches) up to the stream's last message when it
// began, and keeps how far it read: a verify that fails goes on from
// there the next time.
func (p *Publisher) verify(ctx context.Context) error {
	octx, cancel := context.WithTimeout(ctx, p.opts.AckTimeout)
	defer cancel()
	st, err := p.js.Stream(octx, Stream)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	last := st.CachedInfo().State.LastSeq
	found := 0
	if last > p.uncertainFrom {
		cons, err := st.CreateConsumer(octx, jetstream.ConsumerConfig{
			FilterSubject: HostSubjects(p.opts.Host), DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
			OptStartSeq: p.uncertainFrom + 1, AckPolicy: jetstream.AckNonePolicy, HeadersOnly: true,
			MemoryStorage: true, Replicas: 1, InactiveThreshold: time.Minute})
		if err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		defer func() {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.opts.AckTimeout)
			defer cancel()
			_ = st.DeleteConsumer(dctx, cons.CachedInfo().Name)
		}()
		boot := p.bus.BootID()
		// Bounded: each batch moves uncertainFrom on, to last at most.
		for p.uncertainFrom < last {
			if err := ctx.Err(); err != nil {
				return err
			}
			batch, err := cons.Fetch(verifyBatch, jetstream.FetchMaxWait(p.opts.AckTimeout))
			if err != nil {
				return fmt.Errorf("verify: %w", err)
			}
			n := 0
			for m := range batch.Messages() {
				n++
				md, err := m.Metadata()
				if err != nil {
					continue
				}
				if b, seq, ok := ParseMsgID(m.Headers().Get(jetstream.MsgIDHeader)); ok && b == boot && p.uncertain[seq] != nil {
					p.markStored(p.uncertain[seq].seqs)
					delete(p.uncertain, seq)
					found++
				}
				p.uncertainFrom = max(p.uncertainFrom, md.Sequence.Stream)
				if md.NumPending == 0 { // nothing more of this host
					p.uncertainFrom = max(p.uncertainFrom, last)
				}
			}
			if err := batch.Error(); err != nil {
				return fmt.Errorf("verify: %w", err)
			}
			if n == 0 { // none within the wait: nothing more of this host
				break
			}
		}
	}
	p.log.Info("fleet: looked up the publishes left unanswered past half the duplicate window",
		"unanswered", len(p.uncertain)+found, "stored", found)
	// What was not found was not stored: the next flight sends it again
	// as it was (its id is never reused for other events), as a new
	// publish.
	for _, m := range p.uncertain {
		m.sent = time.Time{}
	}
	p.uncertainSince = time.Now()
	return nil
}

// markStored notes that seqs are in the stream past acked: no flight
// publishes them again.
func (p *Publisher) markStored(seqs []uint64) {
	if p.stored == nil {
		p.stored = map[uint64]bool{}
	}
	for _, seq := range seqs {
		p.stored[seq] = true
	}
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
		if l, err := strconv.ParseUint(m.Header.Get(LastSeqHeader), 10, 64); err == nil && l > last {
			last = l // a message of several events
		}
	}
	if last > p.acked.Load() && last <= p.bus.Head() {
		p.acked.Store(last)
		p.log.Info("fleet: resuming this boot's events after the stream's last", "seq", last)
	}
	return nil
}

// flight is one run of publishes. Each is a core NATS publish of a message
// (outMsg: the events of one subject sent together) whose reply subject is
// the flight's inbox followed by the publish's number in the flight: the
// stream's ack comes back there. The acks are taken in the inbox
// subscription's goroutine, in whatever order they come, and acked
// advances over the run's acknowledged prefix. The first failure (an error
// or no-responders answer, no ack within the ack timeout, a disconnect)
// ends the run; the events acknowledged behind the failed publish are
// kept in Publisher.stored, not to be published again. This is what jetstream's
// PublishMsgAsync did for the publisher, without its future, timer and
// JSON decoding for each message.
type flight struct {
	p      *Publisher
	parent context.Context // the run's: Stop gave up when it ends
	ctx    context.Context
	cancel context.CancelCauseFunc
	inbox  string    // the reply subjects' prefix, ending in '.'
	floor  uint64    // the stream's last sequence known when the flight began
	began  time.Time // when the flight began
	sub    *nats.Subscription
	status chan nats.Status
	done   chan struct{} // the watchdog returned

	mu sync.Mutex
	// q[head:]: publishes and marks in the order sent, from the first
	// after the last mark reached; q[head:scan] are acknowledged (no mark
	// among them), q[scan] is not.
	q       []pending
	head    int
	scan    int
	waiting int           // publishes awaiting their answer
	room    chan struct{} // signalled when a slot of the MaxPending frees
	idle    chan struct{} // signalled when waiting falls to 0
	lost    bool          // the connection went: what awaits an answer gets none
	tick    uint64        // the watchdog's clock, in quarters of the ack timeout
	failed  bool          // no more publishes
	ended   bool          // answers that come now are dropped
	stored  uint64        // the highest stream sequence of the flight's acks so far: what is sent now is stored after it

	next uint64 // the number of the next publish or mark
	// resent holds the events of the messages the flight sent again as
	// they were (Publisher.uncertain): send leaves them out.
	resent map[uint64]bool

	// send's own, reused from one publish to the next
	msg   nats.Msg
	id    []string // msg.Header's Nats-Msg-Id
	last  []string // msg.Header's LastSeqHeader
	reply []byte
}

// pending is a publish, or with mark, the sequence reached once every
// publish before it is acknowledged.
type pending struct {
	n     uint64 // its number in the flight, in the reply subject
	seq   uint64 // a mark's sequence
	out   *outMsg
	tick  uint64 // when it was sent, on the watchdog's clock
	mark  bool
	state uint8 // awaiting, acked or refused
}

// outMsg is one message: events of one subject, one JSON a line, its id
// the first one's. Kept until answered: one left unanswered is sent again
// as it was.
type outMsg struct {
	subject string
	id      string // Nats-Msg-Id: MsgID of seqs[0]
	data    []byte
	seqs    []uint64
	// When it was first sent, and a stream sequence before the one it
	// got if stored then: a copy sent again stands for that publish.
	sent  time.Time
	floor uint64
}

func (m *outMsg) last() uint64 { return m.seqs[len(m.seqs)-1] }

// group is a message being filled by send.
type group struct {
	subject string
	data    []byte
	seqs    []uint64
	listed  bool // in Publisher.filling
}

const (
	awaiting = iota
	acked
	refused
)

// Ticks of the watchdog's clock in an ack timeout: a publish not answered
// within timeoutTicks (1 to 1.25 ack timeouts) fails.
const (
	ticksPerTimeout = 4
	timeoutTicks    = ticksPerTimeout + 1
)

func (p *Publisher) newFlight(ctx context.Context) (*flight, error) {
	fctx, cancel := context.WithCancelCause(ctx)
	f := &flight{p: p, parent: ctx, ctx: fctx, cancel: cancel, inbox: p.nc.NewInbox() + ".", done: make(chan struct{}),
		floor: p.lastStored, began: time.Now(),
		room: make(chan struct{}, 1), idle: make(chan struct{}, 1),
		id: make([]string, 1), last: make([]string, 1)}
	f.msg.Header = nats.Header{jetstream.MsgIDHeader: f.id}
	f.reply = append(make([]byte, 0, len(f.inbox)+21), f.inbox...)
	sub, err := p.nc.Subscribe(f.inbox+"*", f.answer)
	if err != nil {
		cancel(nil)
		return nil, fmt.Errorf("ack inbox: %w", err)
	}
	f.sub = sub
	f.status = p.nc.StatusChanged(nats.RECONNECTING, nats.CLOSED)
	go f.watchdog()
	return f, nil
}

// watchdog fails the flight when its oldest publish waits longer than the
// ack timeout for its answer, or when the connection is lost (what was in
// flight may never be answered).
func (f *flight) watchdog() {
	defer close(f.done)
	t := time.NewTicker(f.p.opts.AckTimeout / ticksPerTimeout)
	defer t.Stop()
	for {
		select {
		case <-f.ctx.Done():
			return
		case st := <-f.status:
			f.mu.Lock()
			f.lost = true
			f.failLocked(fmt.Errorf("connection %v: %w", st, nats.ErrDisconnected))
			f.mu.Unlock()
			signal(f.idle) // end need not wait for answers
		case <-t.C:
			f.mu.Lock()
			f.tick++
			if it := f.oldestLocked(); it != nil && it.tick+timeoutTicks <= f.tick {
				f.failLocked(fmt.Errorf("publish of %s: %w", it.name(), jetstream.ErrAsyncPublishTimeout))
			}
			f.mu.Unlock()
		}
	}
}

// failLocked ends the flight for err, unless it failed already. f.mu is
// held.
func (f *flight) failLocked(err error) {
	if !f.failed {
		f.failed = true
		f.cancel(err)
	}
}

// Acks as the server writes them start so, and say nothing else:
// {"stream":"NAME","seq":N} (an error answer starts with its "error").
// Anything else is decoded.
var (
	ackStart = []byte(`{"stream":`)
	ackError = []byte(`"error"`)
)

// answer takes JetStream's answer to one publish, in the inbox
// subscription's goroutine.
func (f *flight) answer(m *nats.Msg) {
	n, err := strconv.ParseUint(strings.TrimPrefix(m.Subject, f.inbox), 10, 64)
	if err != nil {
		return
	}
	aerr := ackErr(m)
	f.mu.Lock()
	defer f.mu.Unlock()
	i, ok := f.find(n)
	if !ok || f.ended {
		return
	}
	f.waiting--
	if f.waiting == f.p.opts.MaxPending-1 {
		signal(f.room)
	}
	if f.waiting == 0 {
		signal(f.idle)
	}
	if aerr != nil {
		f.q[i].state = refused
		f.p.failed.Add(1)
		f.p.failedEvents.Add(uint64(len(f.q[i].out.seqs)))
		f.failLocked(fmt.Errorf("publish of %s: %w", f.q[i].name(), aerr))
		return
	}
	f.q[i].state = acked
	f.stored = max(f.stored, streamSeq(m.Data))
	f.p.ackedN.Add(1)
	if i == f.scan {
		f.advanceLocked()
	}
}

// oldestLocked is the oldest publish awaiting its answer, or nil. f.mu is
// held.
func (f *flight) oldestLocked() *pending {
	if f.scan < len(f.q) && !f.q[f.scan].mark && f.q[f.scan].state == awaiting {
		return &f.q[f.scan]
	}
	return nil
}

// advanceLocked moves scan past the acknowledged publishes and the marks,
// and head past the last of those marks, advancing acked to it: every
// event up to it is in the stream, failure or not (a refused or unanswered
// publish stops it). The publishes acknowledged after the last mark stay
// in q: a failure before the next mark leaves their events known stored.
// f.mu is held.
func (f *flight) advanceLocked() {
	reached := -1
	for ; f.scan < len(f.q) && (f.q[f.scan].mark || f.q[f.scan].state == acked); f.scan++ {
		if f.q[f.scan].mark {
			reached = f.scan
		}
	}
	if reached < 0 {
		return
	}
	f.p.acked.Store(max(f.p.acked.Load(), f.q[reached].seq))
	clear(f.q[f.head : reached+1]) // the messages' bytes go
	f.head = reached + 1
	if f.head == len(f.q) {
		f.q, f.head, f.scan = f.q[:0], 0, 0
	} else if f.head >= 1024 && f.head >= len(f.q)/2 {
		n := copy(f.q, f.q[f.head:])
		clear(f.q[n:])
		f.q, f.scan, f.head = f.q[:n], f.scan-f.head, 0
	}
}

var ackSeq = []byte(`"seq":`)

// streamSeq is the stream sequence an ack names, or 0.
func streamSeq(ack []byte) uint64 {
	i := bytes.Index(ack, ackSeq)
	if i < 0 {
		return 0
	}
	ack = ack[i+len(ackSeq):]
	var n uint64
	for _, c := range ack {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + uint64(c-'0')
	}
	return n
}

// ackErr is why m does not acknowledge its publish, or nil.
func ackErr(m *nats.Msg) error {
	if len(m.Data) == 0 { // a status: no responders (no stream), ...
		return fmt.Errorf("%w (status %s)", jetstream.ErrNoStreamResponse, m.Header.Get("Status"))
	}
	if bytes.HasPrefix(m.Data, ackStart) && !bytes.Contains(m.Data, ackError) {
		return nil
	}
	var r struct {
		Error  *jetstream.APIError `json:"error"`
		Stream string              `json:"stream"`
	}
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return jetstream.ErrInvalidJSAck
	}
	if r.Error != nil {
		return r.Error
	}
	if r.Stream == "" {
		return jetstream.ErrInvalidJSAck
	}
	return nil
}

// find is the index of publish n if it awaits its answer. f.mu is held.
func (f *flight) find(n uint64) (int, bool) {
	i := f.scan
	if i >= len(f.q) || f.q[i].n != n { // answers mostly come in order
		q := f.q[f.head:]
		i = f.head + sort.Search(len(q), func(i int) bool { return q[i].n >= n })
	}
	if i == len(f.q) || f.q[i].n != n || f.q[i].mark || f.q[i].state != awaiting {
		return 0, false
	}
	return i, true
}

// name names a publish in errors: its first event's sequence.
func (it *pending) name() string {
	if it.out == nil {
		return "mark " + strconv.FormatUint(it.seq, 10)
	}
	return "seq " + strconv.FormatUint(it.out.seqs[0], 10)
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// end waits for every answer of the flight (each comes, or fails, within
// the ack timeout) and returns why it failed, if it did. After a failure it
// still takes the answers of the publishes in flight, for up to an ack
// timeout (unless the connection went, which they do not survive): those
// acknowledged are not published again. What is not answered by then
// counts as failed.
func (f *flight) end() error {
	for {
		f.mu.Lock()
		answered := f.waiting == 0
		f.mu.Unlock()
		if answered || f.ctx.Err() != nil {
			break
		}
		select {
		case <-f.idle: // looked at again: it may be from before
		case <-f.ctx.Done():
		}
	}
	var t *time.Timer
	for {
		f.mu.Lock()
		wait := f.failed && !f.lost && f.waiting > 0 && f.p.nc.IsConnected()
		f.mu.Unlock()
		if !wait {
			break
		}
		if t == nil {
			t = time.NewTimer(f.p.opts.AckTimeout)
			defer t.Stop()
		}
		select {
		case <-f.idle: // looked at again: it may be from before
			continue
		case <-f.status: // the watchdog no longer runs: the connection went
			f.mu.Lock()
			f.lost = true
			f.mu.Unlock()
			continue
		case <-t.C:
		case <-f.parent.Done():
		}
		break
	}
	err := context.Cause(f.ctx)
	f.mu.Lock()
	f.ended = true
	f.p.failed.Add(uint64(f.waiting))
	f.cancel(nil)
	p := f.p
	for seq := range p.stored {
		if seq <= p.acked.Load() {
			delete(p.stored, seq)
		}
	}
	for _, it := range f.q[f.head:] {
		switch {
		case it.mark:
		case it.state == acked: // acknowledged behind a failed one
			p.markStored(it.out.seqs)
		case it.state == awaiting, it.state == refused:
			// Unanswered: stored or not. Refused: most likely not
			// stored, but a stream leader that loses its leadership
			// may refuse a publish its successor stores. Either way it
			// is sent again as it was: its id must never stand for
			// other events (a copy under it would be dropped).
			m := it.out
			if it.state == awaiting { // a refusal was counted when it came
				p.failedEvents.Add(uint64(len(m.seqs)))
			}
			if len(p.uncertain) == 0 {
				p.uncertain = map[uint64]*outMsg{}
				p.uncertainFrom, p.uncertainSince = m.floor, m.sent
			}
			p.uncertain[m.seqs[0]] = m
			p.uncertainFrom = min(p.uncertainFrom, m.floor)
			if m.sent.Before(p.uncertainSince) {
				p.uncertainSince = m.sent
			}
		}
	}
	p.lastStored = max(p.lastStored, f.stored)
	f.mu.Unlock()
	_ = f.sub.Unsubscribe()
	f.p.nc.RemoveStatusListener(f.status)
	<-f.done
	return err
}

// send publishes evs, the events of one subject together in a message (up
// to Options.Pack of them and about packBytes), then marks through as
// reached once they are acknowledged. It stops at the first failure.
func (f *flight) send(evs []events.Event, through uint64) (err error) {
	p := f.p
	defer func() {
		for _, g := range p.filling {
			g.listed = false
			if err != nil { // the next flight starts again from acked
				g.data, g.seqs = g.data[:0], g.seqs[:0]
			}
		}
		p.filling = p.filling[:0]
		if len(p.groups) > maxGroups { // many listeners: start again
			p.groups = nil
		}
	}()
	for i := range evs {
		e := &evs[i]
		if p.stored[e.Seq] || f.resent[e.Seq] { // in the stream already, or sent again as it was
			continue
		}
		g := p.group(e)
		n := len(g.data)
		if len(g.seqs) > 0 {
			g.data = append(g.data, '\n')
		}
		data, err := p.opts.Encode(g.data, e)
		if err != nil { // never so for the daemon's own events: skip it, loudly
			g.data = g.data[:n]
			p.log.Error("fleet: event not encodable; skipped", "seq", e.Seq, "err", err)
			continue
		}
		g.data, g.seqs = data, append(g.seqs, e.Seq)
		if len(g.seqs) >= p.opts.Pack || len(g.data) >= packBytes {
			if err := f.flush(g); err != nil {
				return err
			}
		}
	}
	// What is left, oldest first: a reader of a host's events sees them
	// about in order.
	slices.SortFunc(p.filling, func(a, b *group) int { return stdcmp.Compare(firstSeq(a), firstSeq(b)) })
	for _, g := range p.filling {
		if err := f.flush(g); err != nil {
			return err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.q = append(f.q, pending{n: f.next, seq: through, mark: true})
	f.next++
	if f.scan == len(f.q)-1 { // nothing awaited before it
		f.advanceLocked()
	}
	return context.Cause(f.ctx)
}

func firstSeq(g *group) uint64 {
	if len(g.seqs) == 0 {
		return math.MaxUint64
	}
	return g.seqs[0]
}

// group is the message being filled for e's subject. The groups stay
// from one send to the next, with their subjects: most events go to a
// few.
func (p *Publisher) group(e *events.Event) *group {
	k := subjectKey{e.Listener, e.Kind}
	g := p.groups[k]
	if g == nil {
		if p.groups == nil {
			p.groups = map[subjectKey]*group{}
		}
		g = &group{subject: Subject(p.opts.Host, e.Listener, e.Kind)}
		p.groups[k] = g
	}
	if !g.listed {
		g.listed = true
		p.filling = append(p.filling, g)
	}
	return g
}

// maxGroups bounds the groups kept from one batch to the next.
const maxGroups = 256

// flush publishes g's events as one message and empties g. The message
// keeps its bytes until answered; g takes a new buffer.
func (f *flight) flush(g *group) error {
	if len(g.seqs) == 0 {
		return nil
	}
	m := &outMsg{subject: g.subject, id: MsgID(f.p.bus.BootID(), g.seqs[0]), data: g.data, seqs: g.seqs}
	g.data, g.seqs = make([]byte, 0, cap(g.data)), nil
	return f.publish(m)
}

// resend publishes again, as they were, the messages earlier flights left
// unanswered (Publisher.uncertain), oldest first, but those whose events
// are all acknowledged or named by a gap record (through gapTo).
func (f *flight) resend(gapTo uint64) error {
	p := f.p
	if len(p.uncertain) == 0 {
		return nil
	}
	ms := make([]*outMsg, 0, len(p.uncertain))
	for _, m := range p.uncertain {
		if m.last() > max(p.acked.Load(), gapTo) {
			ms = append(ms, m)
		}
	}
	p.uncertain = nil
	slices.SortFunc(ms, func(a, b *outMsg) int { return stdcmp.Compare(a.seqs[0], b.seqs[0]) })
	f.resent = map[uint64]bool{}
	for _, m := range ms {
		for _, seq := range m.seqs {
			f.resent[seq] = true
		}
	}
	for i, m := range ms {
		if err := f.publish(m); err != nil {
			// Those not sent stay unanswered, for the next flight.
			p.uncertain = map[uint64]*outMsg{}
			for _, m := range ms[i+1:] {
				p.uncertain[m.seqs[0]] = m
			}
			return err
		}
	}
	return nil
}

// publish sends m, waiting while MaxPending publishes await their answers.
func (f *flight) publish(m *outMsg) error {
	f.mu.Lock()
	for f.waiting >= f.p.opts.MaxPending && !f.failed {
		f.mu.Unlock()
		select {
		case <-f.room:
		case <-f.ctx.Done(): // failed, or Stop gave up
			return context.Cause(f.ctx)
		}
		f.mu.Lock()
	}
	if f.failed || f.ctx.Err() != nil {
		f.mu.Unlock()
		return context.Cause(f.ctx)
	}
	if m.sent.IsZero() {
		m.sent, m.floor = time.Now(), max(f.floor, f.stored)
	}
	n := f.next
	f.next++
	f.q = append(f.q, pending{n: n, out: m, tick: f.tick})
	f.waiting++
	f.mu.Unlock()

	f.reply = strconv.AppendUint(f.reply[:len(f.inbox)], n, 10)
	f.msg.Subject, f.msg.Reply, f.msg.Data = m.subject, string(f.reply), m.data
	f.id[0] = m.id
	if len(m.seqs) > 1 {
		f.last[0] = strconv.FormatUint(m.last(), 10)
		f.msg.Header[LastSeqHeader] = f.last
	} else {
		delete(f.msg.Header, LastSeqHeader)
	}
	err := f.p.nc.PublishMsg(&f.msg)
	f.msg.Data = nil
	f.p.published.Add(1)
	f.p.eventsN.Add(uint64(len(m.seqs)))
	if err != nil {
		f.mu.Lock()
		if i, ok := f.find(n); ok {
			f.q[i].state = refused
			f.waiting--
			f.p.failed.Add(1)
			f.p.failedEvents.Add(uint64(len(m.seqs)))
		}
		f.failLocked(fmt.Errorf("publish of seq %d: %w", m.seqs[0], err))
		f.mu.Unlock()
		return context.Cause(f.ctx)
	}
	return nil
}

type subjectKey struct {
	listener string
	kind     events.Kind
}

// watch publishes from a watcher of the history, from the last
// acknowledged sequence, until it fails, is cut, or the bus closes.
// progressed reports that some publish was acknowledged.
func (p *Publisher) watch(ctx context.Context) (progressed bool, err error) {
	if p.needVerify() {
		if err := p.verify(ctx); err != nil {
			return false, err
		}
	}
	start := p.acked.Load()
	after := start
	w, _, err := p.bus.Watch(events.Filter{}, &after)
	// The history lost events past start: watch from its oldest (again if
	// it moved meanwhile), and publish the gap record once the first
	// batch is read, so that events recorded while the record is
	// published cannot push more out of the history unread (a second gap).
	var re *events.RangeError
	for tries := 0; tries < 8 && errors.As(err, &re) && after+1 < re.Oldest; tries++ {
		after = re.Oldest - 1
		w, _, err = p.bus.Watch(events.Filter{}, &after)
	}
	if err != nil {
		return false, err
	}
	defer w.Close()
	gapTo := uint64(0)
	if after > start {
		gapTo = after
	}
	f, err := p.newFlight(ctx)
	if err != nil {
		return false, err
	}
	buf := make([]events.Event, 0, batchSize)
	next, cancel := context.WithCancel(f.ctx) // Stop ends the watch; the acks are still awaited
	defer cancel()
	defer context.AfterFunc(p.stopping, cancel)()
	var linger *time.Timer
	for err = f.resend(gapTo); err == nil; {
		evs, through, werr := w.NextBatch(next, buf, 0)
		if gapTo > 0 {
			if err = p.gap(ctx, start+1, gapTo); err != nil {
				break
			}
			gapTo = 0
		}
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
		if len(evs) < batchSize/2 {
			// Let more events gather before the next batch (at most
			// publishLinger late): one wake-up of this goroutine, one
			// write to NATS and one read for the server per batch rather
			// than per event. Meanwhile no one waits on the watcher's
			// channel, so the listeners' Records wake no goroutine.
			if linger == nil {
				linger = time.NewTimer(publishLinger)
				defer linger.Stop()
			} else {
				linger.Reset(publishLinger)
			}
			select {
			case <-linger.C:
			case <-next.Done():
			}
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
		if p.needVerify() && p.verify(ctx) != nil {
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
		f, err := p.newFlight(ctx)
		if err != nil {
			return
		}
		var keep []events.Event
		for _, e := range evs {
			if e.Kind != events.KindConnectionData { // as the watcher's filter
				keep = append(keep, e)
			}
		}
		serr := f.resend(0)
		if serr == nil {
			serr = f.send(keep, evs[len(evs)-1].Seq)
		}
		if f.end() != nil || serr != nil {
			return
		}
	}
}
