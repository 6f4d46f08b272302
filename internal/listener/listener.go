package listener

import (
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"context"

	"golang.org/x/time/rate"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/gopool"
)

// owner is what a listener needs of the manager that owns it.
type owner interface {
	// reserve counts a connection (served or queued) against the
	// daemon-wide cap: RejectDaemonLimit, or RejectUnspecified when
	// counted; release uncounts it.
	reserve() events.RejectReason
	release()
	// connClosed is told how long each served connection was open, and
	// queueLeft how long each queued one waited, for metrics; neither
	// blocks.
	connClosed(listener string, d time.Duration)
	queueLeft(listener string, wait time.Duration)
	// checkLoop refuses a forward dial of from to target that leads back
	// into this daemon's forward listeners.
	checkLoop(ctx context.Context, from *Listener, target netip.AddrPort) error
	fdBudget
}

// fdBudget counts descriptors against the daemon's budget (see
// Options.FDLimit): takeFDs reports false, counting nothing, when n do not
// fit; giveFDs gives back what takeFDs counted.
type fdBudget interface {
	takeFDs(n int64) bool
	giveFDs(n int64)
}

// Listener is one bound TCP listener with its connections. Its accept loop
// and every connection goroutine are owned by it and joined by Close.
type Listener struct {
	id      string
	name    string
	spec    Spec
	handler Handler
	created time.Time
	bus     *events.Bus
	log     *slog.Logger
	ln      *net.TCPListener
	bound   string
	host    owner
	// boundPort is the port bound (or last bound, when FAILED).
	boundPort uint16
	// declared: the declared listeners' reconcile owns it (declared.go).
	declared atomic.Bool

	limits  atomic.Pointer[Limits]
	limiter atomic.Pointer[rate.Limiter] // nil: no accept rate limit
	filters atomic.Pointer[Filters]      // nil: none
	faults  faultState
	state   atomic.Int32

	active   atomic.Int64
	rejected [events.NumRejectReasons]atomic.Uint64 // by reason
	bytesIn  atomic.Uint64
	bytesOut atomic.Uint64

	mu        sync.Mutex
	conns     map[uint64]*Conn     // served
	queue     connQueue            // waiting (overflow QUEUE)
	perSource map[netip.Addr]int64 // served and queued connections by source
	nextConn  uint64               // the last connection's number
	accepted  uint64               // connections served
	lastErr   string
	closeTime time.Time
	stopped   bool          // Close has begun and the accept loop has returned: no connection can be added
	allGone   chan struct{} // closed when stopped and no connection is left
	destroyed uint64        // connections killed by close or shutdown

	slot       chan struct{} // a connection ended or limits changed (overflow BACKLOG)
	stop       chan struct{} // closed when Close begins
	acceptDone chan struct{} // closed when the accept loop has returned
	done       chan struct{} // closed when the listener is CLOSED
	closeOnce  sync.Once
	conWG      sync.WaitGroup
	// The stream handler's connections run on goroutines reused from one
	// connection to the next (nil for the other handlers): see run.
	pool *gopool.Pool
}

// stopPool ends the goroutines of the listener's pool, if it has one,
// once its connections are done (conWG).
func (l *Listener) stopPool() {
	if l.pool != nil {
		l.pool.Close()
		l.pool.Wait()
	}
}

// ID returns the listener's id.
func (l *Listener) ID() string { return l.id }

// Name returns the listener's name, possibly empty.
func (l *Listener) Name() string { return l.name }

// Done is closed once the listener is closed and its last connection gone.
func (l *Listener) Done() <-chan struct{} { return l.done }

// Info is a snapshot of a listener.
type Info struct {
	ID, Name  string
	Spec      Spec
	State     State
	Bound     string
	Active    uint64
	Queued    uint64
	Accepted  uint64
	Rejected  uint64
	BytesIn   uint64
	BytesOut  uint64
	Created   time.Time
	Closed    time.Time // zero while accepting
	LastError string
	Declared  bool // owned by the declared listeners' reconcile
	// RejectedBy splits Rejected by reason.
	RejectedBy [events.NumRejectReasons]uint64
	Faults     FaultCounts
}

// Info returns a snapshot of the listener.
func (l *Listener) Info() Info {
	spec := l.spec
	spec.Limits = *l.limits.Load()
	l.mu.Lock()
	lastErr, closed, accepted, queued := l.lastErr, l.closeTime, l.accepted, l.queue.len()
	l.mu.Unlock()
	var rejected uint64
	var by [events.NumRejectReasons]uint64
	for i := range l.rejected {
		by[i] = l.rejected[i].Load()
		rejected += by[i]
	}
	return Info{
		ID: l.id, Name: l.name, Spec: spec,
		State:     State(l.state.Load()),
		Bound:     l.bound,
		Active:    uint64(max(l.active.Load(), 0)),
		Queued:    uint64(queued),
		Accepted:  accepted,
		Rejected:  rejected,
		BytesIn:   l.bytesIn.Load(),
		BytesOut:  l.bytesOut.Load(),
		Created:   l.created,
		Closed:    closed,
		LastError: lastErr,
		Declared:  l.declared.Load(),

		RejectedBy: by,
		Faults:     l.faultCounts(),
	}
}

// setLimits applies fn to the limits under the listener's lock and
// publishes the result. Limits apply to the next accept: nobody is closed.
func (l *Listener) setLimits(fn func(Limits) (Limits, error)) (Limits, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	next, err := fn(*l.limits.Load())
	if err != nil {
		return Limits{}, err
	}
	l.storeLimits(next)
	l.bus.Publish(events.Event{Listener: l.id, Kind: events.KindLimitsChanged, Detail: &events.Detail{Limits: next}})
	l.signalSlot()
	if promoted, seq := l.promoteLocked(); promoted != nil { // a limit raised
		defer l.startPromoted(promoted, seq) // after the lock is let go
	}
	return next, nil
}

// storeLimits makes lim the limits in force, with its rate limiter. A
// change that leaves the rate and burst as they were keeps the bucket as
// it is: changing the idle timeout must not refill it.
func (l *Listener) storeLimits(lim Limits) {
	if old := l.limits.Load(); old != nil && old.AcceptRate == lim.AcceptRate && old.AcceptBurst == lim.AcceptBurst {
		l.limits.Store(&lim)
		return
	}
	var lr *rate.Limiter
	if lim.AcceptRate > 0 {
		burst := lim.AcceptBurst
		if burst <= 0 {
			burst = max(1, int(lim.AcceptRate))
		}
		lr = rate.NewLimiter(rate.Limit(lim.AcceptRate), burst)
	}
	l.limiter.Store(lr)
	l.limits.Store(&lim)
}

func (l *Listener) signalSlot() {
	select {
	case l.slot <- struct{}{}:
	default:
	}
}

// setLastError records err as the listener's last error.
func (l *Listener) setLastError(err error) {
	l.mu.Lock()
	l.lastErr = err.Error()
	l.mu.Unlock()
}

// finish unregisters a served connection and reports it closed.
func (l *Listener) finish(c *Conn, reason events.CloseReason, errText string) {
	in, out := c.in.Load(), c.out.Load()
	dur := time.Since(c.opened)
	var detail *events.Detail
	if errText != "" {
		detail = &events.Detail{Error: errText}
	}
	detail = c.faultDetail(detail)
	l.mu.Lock()
	delete(l.conns, c.n)
	src := c.tuple.Remote.Addr()
	if l.perSource[src]--; l.perSource[src] <= 0 {
		delete(l.perSource, src)
	}
	l.active.Add(-1)
	l.host.release()
	if reason == events.CloseListenerClosed || reason == events.CloseDaemonShutdown {
		// Destroyed by killAll. Counted here, as it ends, so the
		// listener_closed event (sent once every connection has ended)
		// cannot miss a destruction still under way.
		l.destroyed++
	}
	seq := l.bus.Record(events.Event{Listener: l.id, Kind: events.KindConnectionClosed, Conn: c.n, Tuple: c.tuple,
		BytesIn: in, BytesOut: out, Duration: dur, Close: reason, Detail: detail})
	promoted, pseq := l.promoteLocked()
	if l.stopped && len(l.conns) == 0 {
		closeOnce(l.allGone)
	}
	l.mu.Unlock()
	l.bus.Wake(seq)
	if s := c.session; s != nil {
		s.result = ConnResult{Reason: reason, Error: errText, BytesIn: in, BytesOut: out, Duration: dur}
		close(s.done)
		if r := s.ready; r != nil {
			r.signal() // its stream's goroutine sends closed
		}
	}
	l.startPromoted(promoted, pseq)
	l.signalSlot()
	l.host.connClosed(l.id, dur)
}

func closeOnce(ch chan struct{}) {
	select {
	case <-ch:
	default:
		close(ch)
	}
}

// ConnInfo is a snapshot of one open or queued connection.
type ConnInfo struct {
	ID        string
	Listener  string
	Tuple     events.Tuple
	Opened    time.Time // accepted
	BytesIn   uint64
	BytesOut  uint64
	Queued    bool          // waiting in the queue, not served yet
	QueueWait time.Duration // waited so far (queued), or in all (served)
	Faults    []ConnFault   // its draws for the faults in force
}

// Connections returns the open and queued connections, oldest first, and
// the event sequence the snapshot reflects.
func (l *Listener) Connections() ([]ConnInfo, uint64) {
	now := time.Now()
	l.mu.Lock()
	seq := l.bus.Head()
	out := make([]ConnInfo, 0, len(l.conns)+l.queue.len())
	fs := l.faults.load()
	for _, c := range l.conns {
		out = append(out, ConnInfo{ID: events.ConnID(l.id, c.n), Listener: l.id, Tuple: c.tuple,
			Opened: c.opened, BytesIn: c.in.Load(), BytesOut: c.out.Load(), QueueWait: c.queueWait,
			Faults: l.connFaults(fs, c)})
	}
	for _, c := range l.queue.waiting {
		out = append(out, ConnInfo{ID: events.ConnID(l.id, c.n), Listener: l.id, Tuple: c.tuple,
			Opened: c.opened, Queued: true, QueueWait: now.Sub(c.opened)})
	}
	l.mu.Unlock()
	slices.SortFunc(out, func(a, b ConnInfo) int { return a.Opened.Compare(b.Opened) })
	return out, seq
}

// closeConn kicks connection n: a served one closes with the reason
// KICKED, a queued one is rejected with it.
func (l *Listener) closeConn(n uint64, reset bool) error {
	l.mu.Lock()
	c, q := l.conns[n], l.queue.waiting[n]
	l.mu.Unlock()
	switch {
	case c != nil:
		c.close(events.CloseKicked, reset)
	case q != nil:
		if reset {
			_ = q.c.SetLinger(0)
		}
		if !l.dequeue(q, events.RejectKicked) {
			return ErrNotFound // served or gone meanwhile: ask again
		}
	default:
		return ErrNotFound
	}
	return nil
}

// resume lets paused connection n go on to the listener's handler.
func (l *Listener) resume(n uint64) error {
	l.mu.Lock()
	c := l.conns[n]
	l.mu.Unlock()
	if c == nil || !c.resume() {
		return ErrNotFound
	}
	return nil
}

// killAll destroys every open connection with reason (listener closed or
// daemon shutdown); finish counts them as destroyed.
func (l *Listener) killAll(reason events.CloseReason) {
	l.mu.Lock()
	list := slices.Collect(maps.Values(l.conns))
	l.mu.Unlock()
	for _, c := range list {
		c.close(reason, false)
	}
}

// beginClose stops accepting at once and frees the port; it returns once the
// accept loop has returned. It reports whether this call began the close.
func (l *Listener) beginClose() (first bool) {
	l.closeOnce.Do(func() {
		first = true
		l.mu.Lock()
		l.closeTime = time.Now()
		l.mu.Unlock()
		l.state.Store(int32(StateDraining))
		close(l.stop)
		l.stopFaults()
		if l.ln != nil {
			_ = l.ln.Close()
			<-l.acceptDone
			l.host.giveFDs(listenerFDs)
		}
		// Only now can no accept in flight add a connection: one accepted
		// as the close began is drained like the others, not destroyed
		// because the listener looked empty a moment before.
		l.mu.Lock()
		l.stopped = true
		if len(l.conns) == 0 {
			closeOnce(l.allGone)
		}
		l.mu.Unlock()
		// Nothing more is served: the queue is turned away, and
		// handlers attached to the listener are let go.
		l.rejectQueued(events.RejectListenerClosed)
		if h, ok := l.handler.(interface{ close() }); ok {
			h.close()
		}
	})
	return first
}

// drain waits for the connections to end by themselves until the timeout,
// destroys what is left with reason, then reports the listener closed;
// gone runs just before, so that whoever hears of the close finds the
// listener gone.
func (l *Listener) drain(timeout time.Duration, reason events.CloseReason, open uint64, gone func()) {
	if timeout > 0 {
		t := time.NewTimer(timeout)
		select {
		case <-l.allGone:
		case <-t.C:
		}
		t.Stop()
	}
	l.killAll(reason)
	l.conWG.Wait()
	l.stopPool()
	l.mu.Lock()
	destroyed := l.destroyed
	l.mu.Unlock()
	if State(l.state.Load()) != StateFailed {
		l.state.Store(int32(StateClosed))
	}
	gone()
	l.bus.Publish(events.Event{Listener: l.id, Kind: events.KindListenerClosed,
		Detail: &events.Detail{Drained: open - min(open, destroyed), Destroyed: destroyed}})
	l.log.Info("listener closed", "drained", open-min(open, destroyed), "destroyed", destroyed)
	close(l.done)
}
