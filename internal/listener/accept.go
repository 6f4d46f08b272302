package listener

import (
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/listenerd/listenerd/internal/events"
)

// Accept-error back-off, as Go's net/http server does it.
const (
	minBackoff = 5 * time.Millisecond
	maxBackoff = time.Second
	// acceptErrorEvery bounds accept-error events: errors in between are
	// folded into the next event's count.
	acceptErrorEvery = time.Second
)

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
		if l.acceptFault(c) { // refused, or held to be admitted later
			continue
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
	return lim.Overflow == OverflowBacklog && lim.MaxConnections.Reached(l.active.Load())
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

// admit decides the fate of an accepted connection: rejected at once,
// queued, or counted, registered and served by its own goroutine.
func (l *Listener) admit(c *net.TCPConn) {
	tuple := tupleOf(c)
	src := tuple.Remote.Addr()
	reason := l.refuse(src)
	if reason == events.RejectUnspecified {
		reason = l.host.reserve()
	}
	if reason == events.RejectUnspecified {
		if reason = l.register(c, tuple, src); reason == events.RejectUnspecified {
			return
		}
		l.host.release()
	}
	_ = c.Close()
	l.rejected[reason].Add(1)
	l.bus.Publish(events.Event{Listener: l.id, Kind: events.KindConnectionRejected, Reject: reason, Tuple: tuple})
}

// register, under the listener's lock, checks the per-source limit and
// the connection limit, then serves the connection or queues it. It
// returns why it did neither (having done nothing), or RejectUnspecified.
// Every served connection is counted in here or in promoteLocked, both
// under l.mu, so the active count never passes the limit.
func (l *Listener) register(c *net.TCPConn, tuple events.Tuple, src netip.Addr) events.RejectReason {
	lim := l.limits.Load()
	cn := &Conn{l: l, c: c, tuple: tuple, opened: time.Now()}
	l.mu.Lock()
	if l.stopped { // a connection held by a delay_accept fault, late
		l.mu.Unlock()
		return events.RejectListenerClosed
	}
	// Every source is counted, limited or not, so that a limit set at
	// runtime counts the connections already open.
	if lim.PerSource > 0 && l.perSource[src] >= lim.PerSource {
		l.mu.Unlock()
		return events.RejectPerSourceLimit
	}
	var seq uint64
	queued := false
	switch {
	case !lim.MaxConnections.Reached(l.active.Load()):
		l.nextConn++
		cn.n = l.nextConn
		seq = l.openLocked(cn)
	case lim.Overflow != OverflowQueue:
		l.mu.Unlock()
		return events.RejectMaxConnections
	case l.queue.len() >= lim.Queue():
		l.mu.Unlock()
		return events.RejectQueueFull
	default:
		l.nextConn++
		cn.n = l.nextConn
		seq = l.enqueueLocked(cn, lim.QueueTimeout)
		queued = true
	}
	l.perSource[src]++
	l.mu.Unlock()
	l.bus.Wake(seq)
	if queued { // and from now on the queue's: it may be served already
		return events.RejectUnspecified
	}
	l.start(cn)
	return events.RejectUnspecified
}

// openLocked counts c as served and records its opened event; l.mu must be
// held. The caller wakes the bus with the returned sequence and starts c.
func (l *Listener) openLocked(c *Conn) uint64 {
	l.active.Add(1)
	l.accepted++
	l.conns[c.n] = c
	return l.bus.Record(events.Event{Listener: l.id, Kind: events.KindConnectionOpened, Conn: c.n, Tuple: c.tuple})
}

// start serves c on its own goroutine, joined by the listener's close.
func (l *Listener) start(c *Conn) {
	l.conWG.Add(1)
	l.run(c)
}

// run serves c on its own goroutine; c already holds its count of conWG
// (start's, or the queue's). The stream handler's connections run on
// goroutines of the listener's pool: each sends its bytes through gRPC,
// whose calls grow a new goroutine's stack several times (about a tenth
// of the daemon's CPU in the bench's case i, short connections through
// the stream handler); a reused one has grown already. The others keep a
// goroutine of their own, which an idle connection keeps on its first,
// small stack (see serve).
func (l *Listener) run(c *Conn) {
	if l.spec.Nagle {
		_ = c.c.SetNoDelay(false)
	}
	if l.pool != nil {
		l.pool.Go(c.serve)
		return
	}
	go c.serve()
}

// poolIdle is how long a goroutine of a listener's pool waits for the next
// connection before it ends.
const poolIdle = 5 * time.Second

// refuse returns why a new connection from addr must be rejected before
// any limit is looked at, or RejectUnspecified: the ACL and the rate
// limit are checked first, so a refused source never takes a slot.
func (l *Listener) refuse(addr netip.Addr) events.RejectReason {
	if !l.allowed(addr) {
		return events.RejectDeniedByACL
	}
	if lr := l.limiter.Load(); lr != nil && !lr.Allow() {
		return events.RejectRateLimit
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

// acceptFault applies the accept-side faults in force (refuse,
// delay_accept) to a connection just accepted, each drawn afresh for it.
// It reports true when one took the connection: refused with an RST, or
// held on a goroutine of its own, so that the accept loop never waits, and
// admitted after the delay.
func (l *Listener) acceptFault(c *net.TCPConn) bool {
	fs := l.faults.load()
	if len(fs.faults) == 0 {
		return false
	}
	tuple := tupleOf(c)
	var delay time.Duration
	var by *faultEntry
	for _, e := range fs.faults {
		if !e.f.Kind.AcceptSide() || len(e.f.Sources) > 0 && !inPrefixes(e.f.Sources, tuple.Remote.Addr()) ||
			rand.Float64() >= e.f.Probability {
			continue
		}
		if e.f.Kind == events.FaultRefuse {
			_ = c.SetLinger(0)
			_ = c.Close()
			l.rejected[events.RejectFault].Add(1)
			l.faults.applied.Add(1)
			l.bus.Publish(events.Event{Listener: l.id, Kind: events.KindConnectionRejected, Reject: events.RejectFault, Tuple: tuple,
				Detail: &events.Detail{Fault: &events.FaultEvent{Fault: Fault{Name: e.f.Name, Kind: e.f.Kind}}}})
			return true
		}
		if e.f.Delay > delay {
			delay, by = e.f.Delay, e
		}
	}
	if by == nil {
		return false
	}
	l.faults.applied.Add(1)
	l.bus.Publish(events.Event{Listener: l.id, Kind: events.KindFaultApplied, Tuple: tuple,
		Detail: &events.Detail{Fault: &events.FaultEvent{Fault: Fault{Name: by.f.Name, Kind: by.f.Kind}}}})
	l.conWG.Add(1)
	go func() {
		defer l.conWG.Done()
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
			l.admit(c)
		case <-l.stop:
			_ = c.Close()
			l.rejected[events.RejectListenerClosed].Add(1)
			l.bus.Publish(events.Event{Listener: l.id, Kind: events.KindConnectionRejected, Reject: events.RejectListenerClosed, Tuple: tuple})
		}
	}()
	return true
}
