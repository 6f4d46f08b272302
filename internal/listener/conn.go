package listener

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/listenerd/listenerd/internal/events"
)

// Conn is one accepted connection: queued, paused, or served by its
// listener's handler on its own goroutine.
type Conn struct {
	l         *Listener
	n         uint64
	c         *net.TCPConn
	tuple     events.Tuple
	opened    time.Time     // accepted: queued or served from here
	queueWait time.Duration // how long it waited in the queue; 0: never queued
	idle      time.Duration
	filters   *Filters                  // the listener's when it was served; nil: none
	fc        atomic.Pointer[faultConn] // the listener's faults on it; nil: none
	in        atomic.Uint64
	out       atomic.Uint64

	reason atomic.Uint32 // events.CloseReason set by whoever closes it first

	// mu guards what close touches. The kill channel is made only for a
	// connection that waits on it (paused, half open, dialling upstream):
	// most connections are woken by their socket closing and never need
	// one, and an idle connection is cheaper without it.
	mu         sync.Mutex
	closed     bool
	handedOver bool // its descriptor is the handler's too: a close shuts it down
	// aborted: a reset of a handed-over socket, whose byte counts (read
	// just before, as the reset clears them) are abortedIn and abortedOut.
	aborted               bool
	abortedIn, abortedOut uint64
	kill                  chan struct{}
	take                  chan struct{} // paused: closed when a handler takes it
	peer                  *net.TCPConn  // forward: the upstream connection

	queueTimer *time.Timer // queued: its queue_timeout; guarded by l.mu

	session *Session // the stream handler's, once taken: told how the connection ended
}

// close closes the connection from the daemon's side with reason. It
// reports whether this call was the first to close it.
func (c *Conn) close(reason events.CloseReason, reset bool) bool {
	first := c.reason.CompareAndSwap(0, uint32(reason))
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return first
	}
	c.closed = true
	if c.handedOver {
		// The handler holds the socket too: shut it down for both, before
		// the kill wakes the connection's goroutine, which then reads its
		// bytes and closes the daemon's copy (handover). A reset (a handler
		// gone or one that closed with SO_LINGER 0, a reset fault, a kick
		// with reset) disconnects the socket under every holder: an RST to
		// the peer at once, and ECONNRESET to a holder's next read
		// (abort). The counts are read first: the disconnect clears them.
		if reset {
			c.abortedIn, c.abortedOut, c.aborted = tcpBytes(c.c)
		}
		if !reset || !abort(c.c) {
			// No reset, or the disconnect refused (a thread blocked on
			// it): shut down for both; with reset, a FIN, then the RST at
			// the last close.
			shutdown(c.c, reset)
		}
		if c.kill != nil {
			close(c.kill)
		}
		return first
	}
	if c.kill != nil {
		close(c.kill)
	}
	if reset {
		_ = c.c.SetLinger(0)
	}
	_ = c.c.Close()
	if c.peer != nil {
		_ = c.peer.Close()
	}
	return first
}

// killed returns a channel closed once the daemon closes the connection.
func (c *Conn) killed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.kill == nil {
		c.kill = make(chan struct{})
		if c.closed {
			close(c.kill)
		}
	}
	return c.kill
}

// setPeer records the upstream connection, so that close closes it too. It
// reports false, having closed up, when the connection is already closed.
func (c *Conn) setPeer(up *net.TCPConn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		_ = up.Close()
		return false
	}
	c.peer = up
	return true
}

// serve runs on the connection's own goroutine: it waits while paused,
// then hands the connection to the handler, and reports it closed. Its
// frame is kept small (the rarer paths are methods of their own) so that
// an idle connection's goroutine stays on its first, 2 KiB, stack.
func (c *Conn) serve() {
	t := c.begin()
	var err error
	if !c.l.spec.PauseOnConnect || c.waitTaken() { // closed while paused: the reason is set
		err = c.l.handler.Serve(c)
	}
	c.done(t, err)
}

// done closes the socket and reports the connection closed; its
// goroutine is joined from here on.
//
// Not inlined: keeps serve's frame small: see serve.
//
//go:noinline
func (c *Conn) done(t *time.Timer, err error) {
	defer c.l.conWG.Done()
	_ = c.c.Close()
	if t != nil {
		t.Stop()
	}
	c.end(err)
}

// begin takes the limits in force for the connection's life and arms its
// max_lifetime close.
//
// Not inlined: keeps serve's frame small: see serve.
//
//go:noinline
func (c *Conn) begin() *time.Timer {
	lim := c.l.limits.Load()
	c.idle = lim.IdleTimeout
	c.filters = c.faultFilters(c.l.filters.Load())
	if lim.MaxLifetime <= 0 {
		return nil
	}
	return time.AfterFunc(lim.MaxLifetime, func() { c.close(events.CloseMaxLifetime, false) })
}

// waitTaken holds a paused connection, unread, until a handler takes it
// (true) or the daemon closes it (false). Without a taker it waits until
// it is closed, or sits idle for its idle timeout.
//
// Not inlined: keeps serve's frame small: see serve.
//
//go:noinline
func (c *Conn) waitTaken() bool {
	c.mu.Lock()
	if c.take == nil {
		c.take = make(chan struct{})
	}
	take := c.take
	c.mu.Unlock()
	if c.idle > 0 {
		t := time.AfterFunc(c.idle, func() { c.close(events.CloseIdleTimeout, false) })
		defer t.Stop()
	}
	select {
	case <-take:
		return true
	case <-c.killed():
		return false
	}
}

// resume lets a paused connection go on to its handler. It reports false
// when the connection was not paused (or was taken already).
func (c *Conn) resume() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.l.spec.PauseOnConnect || c.closed {
		return false
	}
	if c.take == nil {
		c.take = make(chan struct{})
	}
	select {
	case <-c.take:
		return false
	default:
		close(c.take)
		return true
	}
}

// halfOpen holds a connection whose peer ended its side: ours stays open
// until someone closes it, it sits idle for its idle timeout, or its
// socket fails: the peer vanished (keepalive probes unanswered, or
// answered with a reset). It returns the socket's error in that case.
//
// Not inlined: keeps the handler's frame small: see serve.
//
//go:noinline
func (c *Conn) halfOpen() error {
	c.PeerEnded()
	if c.idle > 0 {
		t := time.AfterFunc(c.idle, func() { c.close(events.CloseIdleTimeout, false) })
		defer t.Stop()
	}
	return c.peerGone()
}

// end reports the connection closed with its reason.
//
// Not inlined: keeps serve's frame small: see serve.
//
//go:noinline
func (c *Conn) end(err error) {
	reason := events.CloseReason(c.reason.Load())
	var errText string
	switch {
	case reason != 0:
		if s := c.session; s != nil {
			if f := s.failure.Load(); f != nil { // why the daemon reset it
				errText = (*f).Error()
			}
		}
	case err == nil:
		reason = events.ClosePeerClosed
	case errors.Is(err, ErrUpstream): // before a deadline the upstream's error may wrap
		reason, errText = events.CloseUpstreamFailed, err.Error()
	default:
		reason = socketReason(err)
		if reason == events.CloseReset {
			errText = err.Error()
		}
	}
	c.l.finish(c, reason, errText)
}

// socketReason is why a connection whose socket failed with err closed:
// an idle timeout on a deadline, else a reset.
func socketReason(err error) events.CloseReason {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return events.CloseIdleTimeout
	}
	return events.CloseReset
}

// hold keeps the connection open, unread, until it is closed by the daemon
// or sits idle for idle (if set).
func (c *Conn) hold(idle time.Duration) {
	if idle > 0 {
		t := time.AfterFunc(idle, func() { c.close(events.CloseIdleTimeout, false) })
		defer t.Stop()
	}
	<-c.killed()
}
