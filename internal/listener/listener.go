package listener

import (
	"errors"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/listenerd/listenerd/internal/events"
)

// Listener is one bound TCP listener with its connections. Its accept loop
// and every connection goroutine are owned by it and joined by Close.
type Listener struct {
	id      string
	name    string
	spec    Spec
	created time.Time
	bus     *events.Bus
	log     *slog.Logger
	ln      *net.TCPListener
	bound   string
	manager *Manager
	// boundPort is the port bound (or last bound, when FAILED).
	boundPort uint16

	limits  atomic.Pointer[Limits]
	limiter atomic.Pointer[rate.Limiter] // nil: no accept rate limit
	state   atomic.Int32

	active   atomic.Int64
	rejected [events.NumRejectReasons]atomic.Uint64 // by reason
	bytesIn  atomic.Uint64
	bytesOut atomic.Uint64

	mu        sync.Mutex
	conns     map[uint64]*conn
	perSource map[netip.Addr]int64 // open connections by source
	nextConn  uint64               // the last connection's number: also how many were accepted
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
	Accepted  uint64
	Rejected  uint64
	BytesIn   uint64
	BytesOut  uint64
	Created   time.Time
	Closed    time.Time // zero while accepting
	LastError string
	// RejectedBy splits Rejected by reason.
	RejectedBy [events.NumRejectReasons]uint64
}

// Info returns a snapshot of the listener.
func (l *Listener) Info() Info {
	spec := l.spec
	spec.Limits = *l.limits.Load()
	l.mu.Lock()
	lastErr, closed, accepted := l.lastErr, l.closeTime, l.nextConn
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
		Accepted:  accepted,
		Rejected:  rejected,
		BytesIn:   l.bytesIn.Load(),
		BytesOut:  l.bytesOut.Load(),
		Created:   l.created,
		Closed:    closed,
		LastError: lastErr,

		RejectedBy: by,
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

// Accept-error back-off, as Go's net/http server does it.
const (
	minBackoff = 5 * time.Millisecond
	maxBackoff = time.Second
	// acceptErrorEvery bounds accept-error events: errors in between are
	// folded into the next event's count.
	acceptErrorEvery = time.Second
)

// setLastError records err as the listener's last error.
func (l *Listener) setLastError(err error) {
	l.mu.Lock()
	l.lastErr = err.Error()
	l.mu.Unlock()
}

// testHookAccepted, when set by a test, runs after each accept, before the
// connection is admitted.
var testHookAccepted atomic.Pointer[func()]

// acceptLoop accepts until Close. It is the only place a connection is
// counted in, so the active count never passes the limit.
func (l *Listener) acceptLoop() {
	defer close(l.acceptDone)
	var (
		backoff   time.Duration
		lastEvent time.Time
		folded    uint64
	)
	for {
		if !l.waitForSlot() {
			return
		}
		c, err := l.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || l.closing() {
				return
			}
			backoff = min(max(2*backoff, minBackoff), maxBackoff)
			folded++
			l.setLastError(err)
			if now := time.Now(); now.Sub(lastEvent) >= acceptErrorEvery {
				l.log.Warn("accept failed; backing off", "err", err, "backoff", backoff, "count", folded)
				l.bus.Publish(events.Event{Listener: l.id, Kind: events.KindAcceptError,
					Detail: &events.Detail{Error: err.Error(), Backoff: backoff, Count: folded}})
				lastEvent, folded = now, 0
			}
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-l.stop:
				t.Stop()
				return
			}
			continue
		}
		backoff = 0
		if hook := testHookAccepted.Load(); hook != nil {
			(*hook)()
		}
		// A limit lowered, or BACKLOG chosen, while this loop waited in
		// Accept: the connection waits here, as the ones behind it wait in
		// the kernel's queue, instead of being rejected; like them, it is
		// closed if the listener closes first.
		if l.full() && !l.waitForSlot() {
			_ = c.Close()
			return
		}
		l.admit(c)
	}
}

// waitForSlot blocks while the listener is at its limit under the BACKLOG
// overflow policy, leaving new connections in the kernel's queue. It
// returns false when the listener is closing.
func (l *Listener) waitForSlot() bool {
	for {
		if !l.full() {
			return !l.closing()
		}
		select {
		case <-l.slot:
		case <-l.stop:
			return false
		}
	}
}

// full reports whether the listener is at its limit under the BACKLOG
// overflow policy.
func (l *Listener) full() bool {
	lim := l.limits.Load()
	return lim.Backlog && !lim.Unlimited() && l.active.Load() >= lim.MaxConnections
}

// closing reports whether Close has begun.
func (l *Listener) closing() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

func tupleOf(c *net.TCPConn) events.Tuple {
	var t events.Tuple
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ap := a.AddrPort()
		t.Remote = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if a, ok := c.LocalAddr().(*net.TCPAddr); ok {
		ap := a.AddrPort()
		t.Local = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return t
}

// admit decides the fate of an accepted connection: rejected at once, or
// counted, registered and served by its own goroutine.
func (l *Listener) admit(c *net.TCPConn) {
	tuple := tupleOf(c)
	lim := l.limits.Load()
	src := tuple.Remote.Addr()
	reason := l.refuse(lim, src)
	if reason == events.RejectUnspecified {
		reason = l.manager.reserve()
	}
	if reason == events.RejectUnspecified {
		l.active.Add(1)
		if l.register(c, tuple, src, lim.PerSource) {
			return
		}
		l.active.Add(-1)
		l.manager.release()
		reason = events.RejectPerSourceLimit
	}
	_ = c.Close()
	l.rejected[reason].Add(1)
	l.bus.Publish(events.Event{Listener: l.id, Kind: events.KindConnectionRejected, Reject: reason, Tuple: tuple})
}

// register checks the per-source limit and, within the same hold of the
// listener's lock, records the connection and its opened event, then starts
// serving it. It reports false, having done nothing, when the source is at
// its limit.
func (l *Listener) register(c *net.TCPConn, tuple events.Tuple, src netip.Addr, perSource int64) bool {
	cn := &conn{l: l, c: c, tuple: tuple, opened: time.Now()}
	l.mu.Lock()
	// Every source is counted, limited or not, so that a limit set at
	// runtime counts the connections already open.
	if perSource > 0 && l.perSource[src] >= perSource {
		l.mu.Unlock()
		return false
	}
	l.perSource[src]++
	l.nextConn++
	cn.n = l.nextConn
	l.conns[cn.n] = cn
	seq := l.bus.Record(events.Event{Listener: l.id, Kind: events.KindConnectionOpened, Conn: cn.n, Tuple: tuple})
	l.mu.Unlock()
	l.bus.Wake(seq)
	if l.spec.Nagle {
		_ = c.SetNoDelay(false)
	}
	l.conWG.Add(1)
	go cn.serve()
	return true
}

// refuse returns why a new connection from addr must be rejected, or
// RejectUnspecified to admit it. The ACL and the rate limit are checked
// before the limit, so a refused source never takes a slot.
func (l *Listener) refuse(lim *Limits, addr netip.Addr) events.RejectReason {
	if !l.allowed(addr) {
		return events.RejectDeniedByACL
	}
	if lr := l.limiter.Load(); lr != nil && !lr.Allow() {
		return events.RejectRateLimit
	}
	if !lim.Unlimited() && l.active.Load() >= lim.MaxConnections {
		return events.RejectMaxConnections
	}
	return events.RejectUnspecified
}

func (l *Listener) allowed(addr netip.Addr) bool {
	for _, p := range l.spec.Deny {
		if p.Contains(addr) {
			return false
		}
	}
	if len(l.spec.Allow) == 0 {
		return true
	}
	for _, p := range l.spec.Allow {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// finish unregisters a served connection and reports it closed.
func (l *Listener) finish(c *conn, reason events.CloseReason, errText string) {
	in, out := c.in.Load(), c.out.Load()
	dur := time.Since(c.opened)
	var detail *events.Detail
	if errText != "" {
		detail = &events.Detail{Error: errText}
	}
	l.mu.Lock()
	delete(l.conns, c.n)
	src := c.tuple.Remote.Addr()
	if l.perSource[src]--; l.perSource[src] <= 0 {
		delete(l.perSource, src)
	}
	l.active.Add(-1)
	l.manager.release()
	if reason == events.CloseListenerClosed || reason == events.CloseDaemonShutdown {
		// Destroyed by killAll. Counted here, as it ends, so the
		// listener_closed event (sent once every connection has ended)
		// cannot miss a destruction still under way.
		l.destroyed++
	}
	seq := l.bus.Record(events.Event{Listener: l.id, Kind: events.KindConnectionClosed, Conn: c.n, Tuple: c.tuple,
		BytesIn: in, BytesOut: out, Duration: dur, Close: reason, Detail: detail})
	if l.stopped && len(l.conns) == 0 {
		closeOnce(l.allGone)
	}
	l.mu.Unlock()
	l.bus.Wake(seq)
	l.signalSlot()
	if f := l.manager.connClosed; f != nil {
		f(l.id, dur)
	}
}

func closeOnce(ch chan struct{}) {
	select {
	case <-ch:
	default:
		close(ch)
	}
}

// ConnInfo is a snapshot of one open connection.
type ConnInfo struct {
	ID       string
	Listener string
	Tuple    events.Tuple
	Opened   time.Time
	BytesIn  uint64
	BytesOut uint64
}

// Connections returns the open connections, oldest first, and the event
// sequence the snapshot reflects.
func (l *Listener) Connections() ([]ConnInfo, uint64) {
	l.mu.Lock()
	seq := l.bus.Head()
	out := make([]ConnInfo, 0, len(l.conns))
	for _, c := range l.conns {
		out = append(out, ConnInfo{ID: events.ConnID(l.id, c.n), Listener: l.id, Tuple: c.tuple,
			Opened: c.opened, BytesIn: c.in.Load(), BytesOut: c.out.Load()})
	}
	l.mu.Unlock()
	slices.SortFunc(out, func(a, b ConnInfo) int { return a.Opened.Compare(b.Opened) })
	return out, seq
}

// closeConn kicks connection n.
func (l *Listener) closeConn(n uint64, reset bool) error {
	l.mu.Lock()
	c := l.conns[n]
	l.mu.Unlock()
	if c == nil {
		return ErrNotFound
	}
	c.close(events.CloseKicked, reset)
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
		if l.ln != nil {
			_ = l.ln.Close()
			<-l.acceptDone
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
	})
	return first
}

// drain waits for the connections to end by themselves until the timeout,
// destroys what is left with reason, then reports the listener closed.
func (l *Listener) drain(timeout time.Duration, reason events.CloseReason, open uint64) {
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
	l.mu.Lock()
	destroyed := l.destroyed
	l.mu.Unlock()
	l.bus.Publish(events.Event{Listener: l.id, Kind: events.KindListenerClosed,
		Detail: &events.Detail{Drained: open - min(open, destroyed), Destroyed: destroyed}})
	if State(l.state.Load()) != StateFailed {
		l.state.Store(int32(StateClosed))
	}
	l.log.Info("listener closed", "drained", open-min(open, destroyed), "destroyed", destroyed)
	close(l.done)
}
