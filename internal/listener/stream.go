package listener

import (
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/gopool"
)

// The stream handler offers each connection to the programs attached to
// its listener (Manager.Attach), which take it (Manager.Take) and serve
// its bytes from afar: the API carries them, one stream per connection.
// A connection waits, unread, until it is taken, for at most its claim
// timeout. A handler may also open streams ahead (Manager.Ready): the
// next connection chosen for it is bound to one of them, with no offer
// and no take.

// Stream defaults and bounds.
const (
	DefaultClaimTimeout = 10 * time.Second
	MaxClaimTimeout     = time.Hour
	DefaultHandlerConns = 64    // connections a handler takes at once when it does not say
	MaxHandlerConns     = 65535 // and at most
	// MaxStreamFrame is the most bytes of one data frame to a handler:
	// grpc-go pools a 32 KiB payload into a far larger buffer.
	MaxStreamFrame = 32752
)

// StreamOptions are the stream handler's options.
type StreamOptions struct {
	ClaimTimeout JSONSeconds `json:"claim_timeout,omitempty"` // 0: DefaultClaimTimeout
}

// Stream offers connections to attached handlers.
var Stream = HandlerKind{Name: "stream", New: func(opts json.RawMessage) (Handler, error) {
	var o StreamOptions
	if err := decodeOptions(opts, &o); err != nil {
		return nil, err
	}
	d := time.Duration(o.ClaimTimeout)
	if d < 0 || d > MaxClaimTimeout {
		return nil, Invalid("claim_timeout", "%v is out of range 0-%v", d, MaxClaimTimeout)
	}
	return &streamHub{timeout: orDefault(d, DefaultClaimTimeout), handlers: map[string]*Attachment{}, offered: map[uint64]*waiting{}}, nil
}}

// streamHub is a stream listener's attached handlers and the connections
// waiting for one. Its lock is taken alone, or after Listener.mu.
type streamHub struct {
	timeout time.Duration

	l *Listener // set once, as its listener is made (bind)

	mu       sync.Mutex
	handlers map[string]*Attachment
	order    []*Attachment       // attach order: ties in load go to the oldest
	queue    []*waiting          // not offered yet (no handler has room), oldest first
	offered  map[uint64]*waiting // offered and not taken, by connection number
	closed   bool
}

// waiting is a connection waiting to be taken.
type waiting struct {
	c          *Conn
	to         *Attachment   // offered to; nil while queued
	taken      chan *Session // taken, or bound to a ready stream (Session.ready): Serve opens it
	sawHandler bool          // a handler was attached at some time during the wait
	gone       bool          // timed out or killed: no longer takeable
}

// Offer is a connection offered to one handler.
type Offer struct {
	ConnID string
	Tuple  events.Tuple
}

// Attachment is one handler attached to a stream listener.
type Attachment struct {
	id, label string
	max       int
	hub       *streamHub
	offers    chan Offer // capacity max: never blocks, as load <= max
	done      chan struct{}
	load      int // offered or taken, not yet ended; guarded by hub.mu
	once      sync.Once
	ready     []*Ready // streams parked ahead, oldest first; guarded by hub.mu
	detached  bool     // guarded by hub.mu

	// Handover: the sockets themselves go over a side connection.
	m        *Manager
	handover bool
	secret   string    // one-time, for the side connection
	side     *sideConn // once connected; guarded by hub.mu
}

// Secret is a handover attachment's one-time secret for its side
// connection ("" without handover).
func (a *Attachment) Secret() string { return a.secret }

// ID is the handler's daemon-wide id.
func (a *Attachment) ID() string { return a.id }

// Listener is the id of the listener it is attached to.
func (a *Attachment) Listener() string { return a.hub.l.id }

// Offers delivers the connections offered to this handler.
func (a *Attachment) Offers() <-chan Offer { return a.offers }

// Done is closed when the attachment ends: detached, or its listener
// closed.
func (a *Attachment) Done() <-chan struct{} { return a.done }

// Detach ends the attachment: offers it has not taken go to the other
// handlers (or wait for one). Connections it took are unaffected.
func (a *Attachment) Detach(reason string) {
	a.m.mu.Lock()
	if a.secret != "" {
		delete(a.m.secrets, a.secret)
	}
	if a.m.attached[a.id] == a {
		delete(a.m.attached, a.id)
	}
	a.m.mu.Unlock()
	h := a.hub
	h.mu.Lock()
	if h.handlers[a.id] != a {
		h.mu.Unlock()
		return
	}
	delete(h.handlers, a.id)
	a.detached = true
	a.endReadyLocked()
	for i, o := range h.order {
		if o == a {
			h.order = append(h.order[:i:i], h.order[i+1:]...)
			break
		}
	}
	var back []*waiting
	for _, w := range h.offered {
		if w.to == a {
			w.to = nil
			delete(h.offered, w.c.n)
			back = append(back, w)
		}
	}
	// Put back in arrival order, ahead of later arrivals.
	slices.SortFunc(back, func(a, b *waiting) int { return cmp.Compare(a.c.n, b.c.n) })
	h.queue = append(back, h.queue...)
	h.dispatchLocked()
	h.mu.Unlock()
	a.end()
	h.l.bus.Publish(events.Event{Listener: h.l.id, Kind: events.KindHandlerDetached, Detail: &events.Detail{Handler: a.id, Error: reason}})
}

func (a *Attachment) end() { a.once.Do(func() { close(a.done) }) }

// endReadyLocked ends the streams parked ahead: they serve nothing now.
// hub.mu must be held.
func (a *Attachment) endReadyLocked() {
	for _, r := range a.ready {
		r.state = readyEnded
		r.signal()
	}
	a.ready = nil
}

func newHandlerID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "h-" + hex.EncodeToString(b[:])
}

// ErrNotStream is an attach or take on a listener whose handler is not
// stream.
var ErrNotStream = errors.New("the listener's handler is not stream")

// ErrNoHandover is a handover attach on a daemon that serves none.
var ErrNoHandover = errors.New("handover not served")

// Attach attaches a handler to a stream listener, taking up to max
// connections at once (0: DefaultHandlerConns).
// With handover, connections go to the handler as descriptors over the
// side connection it opens with the attachment's secret (ServeHandover).
func (m *Manager) Attach(ref string, max int, label string, handover bool) (*Attachment, error) {
	if max < 0 || max > MaxHandlerConns {
		return nil, Invalid("max_connections", "%d is out of range 1-%d (0: %d)", max, MaxHandlerConns, DefaultHandlerConns)
	}
	if max == 0 {
		max = DefaultHandlerConns
	}
	l, err := m.Get(ref)
	if err != nil {
		return nil, err
	}
	h, ok := l.handler.(*streamHub)
	if !ok {
		return nil, fmt.Errorf("listener %s: %w (it is %s)", l.id, ErrNotStream, l.spec.Handler.Name())
	}
	if State(l.state.Load()) != StateListening {
		return nil, fmt.Errorf("listener %s is %s: %w", l.id, State(l.state.Load()), ErrNotListening)
	}
	a := &Attachment{id: newHandlerID(), label: label, max: max, hub: h, offers: make(chan Offer, max), done: make(chan struct{}),
		m: m, handover: handover}
	if handover {
		a.secret = newSecret()
		m.mu.Lock()
		m.secrets[a.secret] = a
		m.mu.Unlock()
	}
	// Known to ready takes before the hub has it (they check the hub), so
	// that m.mu is never taken under h.mu.
	m.mu.Lock()
	m.attached[a.id] = a
	m.mu.Unlock()
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		m.mu.Lock()
		delete(m.attached, a.id)
		m.mu.Unlock()
		return nil, fmt.Errorf("listener %s is closing: %w", l.id, ErrNotListening)
	}
	h.handlers[a.id] = a
	h.order = append(h.order, a)
	for _, w := range h.queue {
		w.sawHandler = true
	}
	l.bus.Publish(events.Event{Listener: l.id, Kind: events.KindHandlerAttached,
		Detail: &events.Detail{Handler: a.id, Name: label, Count: uint64(max)}})
	h.dispatchLocked()
	h.mu.Unlock()
	return a, nil
}

// dispatchLocked offers queued connections, oldest first, each to the
// least loaded handler with room; h.mu must be held.
func (h *streamHub) dispatchLocked() {
	for len(h.queue) > 0 {
		var best *Attachment
		for _, a := range h.order {
			if a.handover && a.side == nil {
				continue // not connected yet: nowhere to send a socket
			}
			if a.load < a.max && (best == nil || a.load < best.load) {
				best = a
			}
		}
		if best == nil {
			return
		}
		w := h.queue[0]
		h.queue = h.queue[1:]
		w.to = best
		best.load++
		if best.handover { // no take: the socket goes at once
			w.taken <- &Session{c: w.c, to: best, side: best.side, done: make(chan struct{}), handlerEnd: make(chan struct{})}
			h.l.bus.Publish(events.Event{Listener: h.l.id, Kind: events.KindConnectionTaken, Conn: w.c.n, Detail: &events.Detail{Handler: best.id}})
			continue
		}
		if len(best.ready) > 0 { // a stream opened ahead: no offer, no take
			r := best.ready[0]
			best.ready = best.ready[1:]
			s := &Session{c: w.c, to: best, pending: w, ready: r, handlerEnd: make(chan struct{}), done: make(chan struct{})}
			r.state, r.cur = readyBound, s
			w.taken <- s // room: one binding at a time; Serve opens it on its own goroutine
			continue
		}
		h.offered[w.c.n] = w
		best.offers <- Offer{ConnID: w.c.ID(), Tuple: w.c.tuple} // room: load <= max
	}
}

// bind gives the hub its listener, before any connection or attach.
// bind also gives the listener its pool: the connections run on reused
// goroutines (see Listener.run).
func (h *streamHub) bind(l *Listener) {
	h.l = l
	l.pool = gopool.New(poolIdle)
}

// close ends every attachment: the listener is closing. Waiting
// connections are closed with it.
func (h *streamHub) close() {
	h.mu.Lock()
	h.closed = true
	list := h.order
	h.order, h.handlers = nil, map[string]*Attachment{}
	for _, a := range list {
		a.endReadyLocked()
	}
	h.mu.Unlock()
	for _, a := range list {
		a.m.mu.Lock()
		if a.m.attached[a.id] == a {
			delete(a.m.attached, a.id)
		}
		a.m.mu.Unlock()
		a.end()
	}
}

// Serve waits until a handler takes the connection, then lets it pump
// the bytes. A connection bound to a ready stream is opened from here, on
// the connection's goroutine: the stream's goroutine is not woken for it.
func (h *streamHub) Serve(c *Conn) error {
	w := &waiting{c: c, taken: make(chan *Session, 1)}
	h.mu.Lock()
	w.sawHandler = len(h.handlers) > 0
	h.queue = append(h.queue, w)
	h.dispatchLocked()
	h.mu.Unlock()

	t := time.NewTimer(h.timeout) // given back to the queue, it keeps its claim timeout
	defer t.Stop()
	var s *Session
	var sink Sink
	for s == nil {
		select {
		case s = <-w.taken:
		case <-t.C:
		case <-c.killed():
		}
		var bound *Session
		if s != nil && s.ready != nil {
			var abandoned bool
			if sink, abandoned = h.open(s, t.C); sink == nil && !abandoned {
				s = nil // given back, to a handler again
				continue
			} else if abandoned {
				s, bound = nil, s
			}
		}
		if s == nil {
			if s = h.waitEnded(w, bound); s == nil {
				return nil
			}
		}
	}
	defer h.ended(s)
	if s.side != nil {
		c.session = s
		return s.handover(s.side) // the bytes go past the daemon: see faultConn.may
	}
	if fc := c.fc.Load(); fc != nil && fc.socketOnly.Load() {
		fc.served()
	}
	if sink == nil { // a taken offer: its stream's goroutine starts it
		select {
		case sink = <-s.start:
		case <-c.killed():
			return nil
		}
	}
	return s.pump(sink)
}

// waitEnded closes a connection whose wait ended (claim timeout, or
// killed) with no handler serving it, unless it was taken meanwhile: that
// session is returned. bound: a session bound to a ready stream that was
// not opened: the stream parks again.
func (h *streamHub) waitEnded(w *waiting, bound *Session) *Session {
	h.mu.Lock()
	if bound != nil {
		h.unbindLocked(bound)
	}
	var s *Session
	select {
	case s = <-w.taken: // taken as the wait ended
		if s.ready != nil { // only bound: the stream parks again
			h.unbindLocked(s)
			s = nil
		}
	default:
	}
	if s == nil {
		w.gone = true
		h.dropLocked(w)
	}
	saw := w.sawHandler
	h.mu.Unlock()
	if s != nil {
		return s
	}
	reason := events.CloseNoHandler
	if saw {
		reason = events.CloseClaimTimeout
	}
	w.c.close(reason, false) // a kill's reason, set first, wins
	return nil
}

// open opens s, bound to a ready stream, on the connection's goroutine:
// the stream's Opener sends opened, and the connection is the handler's
// (connection_taken). If the stream broke first, or its handler detached,
// the handler never had it: it goes back to the head of the queue (nil,
// false), and its wait goes on. abandoned: the wait ended (timeout, or
// killed) while the stream was busy: the caller unbinds it.
func (h *streamHub) open(s *Session, timeout <-chan time.Time) (sink Sink, abandoned bool) {
	r, w := s.ready, s.pending
	h.mu.Lock()
	detached := r.a.detached
	h.mu.Unlock()
	err := ErrReadyEnded
	if !detached {
		sink, err = r.o.Open(s, timeout)
		if errors.Is(err, ErrOpenAbandoned) {
			return nil, true
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	s.pending = nil
	if err != nil {
		r.state, r.cur = readyEnded, nil
		r.signal() // its stream's goroutine ends
		w.to.load--
		w.to = nil
		h.queue = append([]*waiting{w}, h.queue...)
		h.dispatchLocked()
		return nil, false
	}
	r.state = readyServing
	w.c.session = s
	if r.stopping {
		r.signal() // its stream's goroutine watches it now
	}
	h.l.bus.Publish(events.Event{Listener: h.l.id, Kind: events.KindConnectionTaken, Conn: w.c.n, Detail: &events.Detail{Handler: s.to.id}})
	return sink, false
}

// unbindLocked parks again the ready stream s was bound to and not
// opened on (or ends it, if its goroutine is stopping it); h.mu must be
// held. s.pending is left to the caller (dropLocked).
func (h *streamHub) unbindLocked(s *Session) {
	r := s.ready
	s.pending = nil
	r.cur = nil
	if r.stopping {
		r.state = readyEnded
		r.signal()
		return
	}
	r.state = readyParked
	r.a.ready = append([]*Ready{r}, r.a.ready...)
}

// dropLocked takes w out of the hub; h.mu must be held.
func (h *streamHub) dropLocked(w *waiting) {
	if w.to != nil {
		delete(h.offered, w.c.n)
		w.to.load--
		w.to = nil
		h.dispatchLocked()
		return
	}
	for i, q := range h.queue {
		if q == w {
			h.queue = append(h.queue[:i:i], h.queue[i+1:]...)
			return
		}
	}
}

// ended frees the handler's room once a taken connection is done.
func (h *streamHub) ended(s *Session) {
	h.mu.Lock()
	s.to.load--
	h.dispatchLocked()
	h.mu.Unlock()
}

// Take gives the connection offered to handler to it. The session's
// Start begins the bytes' flow.
func (m *Manager) Take(connID, handler string) (*Session, error) {
	lid, n, ok := events.ParseConnID(connID)
	if !ok {
		return nil, Invalid("take.connection_id", "%q is not a connection id (listener id, '.', number)", Clip(connID))
	}
	l, err := m.Get(lid)
	if err != nil {
		return nil, fmt.Errorf("connection %q: %w", connID, ErrNotFound)
	}
	h, ok := l.handler.(*streamHub)
	if !ok {
		return nil, fmt.Errorf("listener %s: %w", l.id, ErrNotStream)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	w := h.offered[n]
	if w == nil || w.gone {
		return nil, fmt.Errorf("connection %q: no such offer (taken, timed out or closed): %w", connID, ErrNotFound)
	}
	if w.to.id != handler {
		return nil, fmt.Errorf("connection %q was offered to another handler: %w", connID, ErrOfferedElsewhere)
	}
	delete(h.offered, n)
	return h.takeLocked(w), nil
}

// takeLocked gives w to the handler it was offered or bound to; h.mu
// must be held.
func (h *streamHub) takeLocked(w *waiting) *Session {
	s := &Session{c: w.c, to: w.to, start: make(chan Sink, 1), handlerEnd: make(chan struct{}), done: make(chan struct{})}
	w.c.session = s
	w.taken <- s
	h.l.bus.Publish(events.Event{Listener: h.l.id, Kind: events.KindConnectionTaken, Conn: w.c.n, Detail: &events.Detail{Handler: w.to.id}})
	return s
}

// ErrHandoverHandler is a ready stream of a handler that takes sockets by
// handover: its connections never go through a stream.
var ErrHandoverHandler = errors.New("the handler takes sockets by handover")

// Ready is a handler's stream opened ahead of its connections (a take
// that names only the handler): the next connection chosen for the
// handler is bound to it, and its stream serves that connection. A
// parked Ready is not a connection: it does not count toward the
// handler's max_connections. A Ready serves one connection at most.
//
// The connection's goroutine opens it (Opener.Open), and pumps its
// bytes; the stream's goroutine is woken once the connection is done
// (Claim), or when it stops the stream (Stop) while one is bound or
// served.
type Ready struct {
	a    *Attachment
	o    Opener
	wake chan struct{} // capacity 1: see Claim
	// Guarded by hub.mu.
	state    readyState
	cur      *Session // bound or served
	stopping bool     // its stream's goroutine stops it and waits for the outcome (Stop)
}

type readyState uint8

const (
	readyParked  readyState = iota // in its handler's ready list
	readyBound                     // a connection is bound to it: its goroutine opens it
	readyServing                   // opened: the connection is the handler's
	readyEnded                     // serves nothing (more)
)

// Opener opens a connection bound to a ready stream: it sends the
// connection's opened message on the stream, on the connection's
// goroutine, and returns where the peer's bytes go. An error means the
// handler never had the connection (its stream broke): it goes to a
// handler again. ErrOpenAbandoned: timeout fired, or the connection was
// killed, while the stream could not take the message yet.
type Opener interface {
	Open(s *Session, timeout <-chan time.Time) (Sink, error)
}

// ErrOpenAbandoned is an Opener's answer when the connection's wait
// ended before the stream could open it.
var ErrOpenAbandoned = errors.New("the connection's wait ended before its stream could open it")

func (r *Ready) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// ErrReadyEnded ends a ready stream that serves no connection: its
// handler detached, or its listener closed.
var ErrReadyEnded = errors.New("the handler's ready stream ended")

// Ready parks a stream ahead for handler, at most its max_connections at
// once; o opens the connection bound to it.
func (m *Manager) Ready(handler string, o Opener) (*Ready, error) {
	m.mu.Lock()
	a := m.attached[handler]
	m.mu.Unlock()
	if a == nil {
		return nil, fmt.Errorf("handler %q: no such handler (detached, or never attached): %w", Clip(handler), ErrNotFound)
	}
	if a.handover {
		return nil, fmt.Errorf("handler %s: %w: its connections come on the side socket", a.id, ErrHandoverHandler)
	}
	h := a.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if a.detached || h.handlers[a.id] != a {
		return nil, fmt.Errorf("handler %q: no such handler (detached, or never attached): %w", a.id, ErrNotFound)
	}
	if len(a.ready) >= a.max {
		return nil, fmt.Errorf("handler %s has %d streams ready already, its max_connections: %w", a.id, len(a.ready), ErrLimit)
	}
	r := &Ready{a: a, o: o, wake: make(chan struct{}, 1)}
	a.ready = append(a.ready, r)
	h.dispatchLocked()
	return r, nil
}

// AttachmentDone is closed when handler's attachment ends (detached, or
// its listener closed); closed already when it has none.
func (m *Manager) AttachmentDone(handler string) <-chan struct{} {
	m.mu.Lock()
	a := m.attached[handler]
	m.mu.Unlock()
	if a == nil {
		return closedChan
	}
	return a.done
}

// closedChan is a channel closed for good.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Wake is signalled when the connection opened on the stream is done,
// when the stream ended, or when a connection is opened on a stream that
// is stopping: then call Claim.
func (r *Ready) Wake() <-chan struct{} { return r.wake }

// Done is closed when the handler's attachment ends.
func (r *Ready) Done() <-chan struct{} { return r.a.done }

// Claim says what became of the stream once Wake was signalled: the
// connection opened on it, once done (or, on a stream stopping, once
// opened); ErrReadyEnded when it serves nothing (its handler detached,
// or the connection bound to it went back to the queue); nil, nil: wait
// on.
func (r *Ready) Claim() (*Session, error) {
	h := r.a.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	switch r.state {
	case readyEnded:
		return nil, ErrReadyEnded
	case readyServing:
		if s := r.cur; r.stopping || isClosed(s.done) {
			r.state, r.cur = readyEnded, nil
			return s, nil
		}
	}
	return nil, nil
}

// Stop ends a stream's parking, at its goroutine's asking (the handler
// released the stream, stopped sending, went away, or its attachment
// ended). It returns the connection served on it, to watch until it is
// done; or wait true when a connection is bound to it and being opened:
// wait on Wake and Claim for the outcome. Neither: the stream serves
// nothing.
func (r *Ready) Stop() (s *Session, wait bool) {
	h := r.a.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	switch r.state {
	case readyParked:
		if i := slices.Index(r.a.ready, r); i >= 0 {
			r.a.ready = slices.Delete(r.a.ready, i, i+1)
		}
	case readyBound:
		r.stopping = true
		return nil, true
	case readyServing:
		s = r.cur
	}
	r.state, r.cur = readyEnded, nil
	return s, false
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// ErrOfferedElsewhere is a take of a connection offered to another
// handler.
var ErrOfferedElsewhere = errors.New("offered to another handler")

// Sink is where a taken connection's bytes from the peer go: the
// handler's stream. Data gets at most MaxStreamFrame bytes a call and may
// keep nothing of p once it returns.
type Sink interface {
	Data(p []byte) error
	End() error
}

// Session is a taken connection, as its handler's stream serves it.
type Session struct {
	c          *Conn
	to         *Attachment
	pending    *waiting  // bound to a ready stream, not opened yet; guarded by hub.mu
	ready      *Ready    // the ready stream it is bound to, if it is
	side       *sideConn // handover: the descriptor goes there
	start      chan Sink
	endOnce    sync.Once
	handlerEnd chan struct{} // closed when the handler ended its side or reset
	done       chan struct{} // closed once the connection is closed and reported
	result     ConnResult
	failure    atomic.Pointer[error] // why the daemon reset it, for the closed event
}

// ConnResult is how a connection ended.
type ConnResult struct {
	Reason   events.CloseReason
	Error    string
	BytesIn  uint64
	BytesOut uint64
	Duration time.Duration
}

// ID is the connection's id.
func (s *Session) ID() string { return s.c.ID() }

// Tuple is the connection's five-tuple.
func (s *Session) Tuple() events.Tuple { return s.c.tuple }

// Start begins the flow of the peer's bytes to sink, for a taken offer.
func (s *Session) Start(sink Sink) {
	s.start <- sink
}

// Write writes the handler's bytes to the peer (through the listener's
// out filters); it blocks while the peer does not read.
func (s *Session) Write(p []byte) error {
	_, err := s.c.Out().Write(p)
	return err
}

// CloseWrite ends the daemon's side once what was written is out; the
// socket stays readable.
func (s *Session) CloseWrite() error {
	err := s.c.Out().CloseWrite()
	s.endOnce.Do(func() { close(s.handlerEnd) })
	return err
}

// Reset resets the connection (RST), at the handler's asking.
func (s *Session) Reset() {
	s.c.close(events.CloseHandlerReset, true)
	s.endOnce.Do(func() { close(s.handlerEnd) })
}

// Abort resets the connection because the handler's stream broke.
func (s *Session) Abort(err error) {
	select {
	case <-s.done:
		return // closed already: nothing to reset
	default:
	}
	s.failure.Store(&err)
	s.c.close(events.CloseHandlerGone, true)
	s.endOnce.Do(func() { close(s.handlerEnd) })
}

// Killed is closed once the daemon closes the connection (a kill, a
// timeout).
func (s *Session) Killed() <-chan struct{} { return s.c.killed() }

// Done is closed once the connection is closed; Result then says how.
func (s *Session) Done() <-chan struct{} { return s.done }

// Result is how the connection ended, once Done is closed.
func (s *Session) Result() ConnResult { return s.result }

// pump runs on the connection's goroutine: the peer's bytes to sink
// until the peer ends its side, then waits for the handler's end.
func (s *Session) pump(sink Sink) error {
	err := s.c.In(sinkStage{s, sink})
	if err != nil {
		return err
	}
	select { // the peer ended; the handler may still write
	case <-s.handlerEnd:
	case <-s.c.killed():
	}
	return nil
}

// sinkStage writes the peer's bytes to a sink, in frames of at most
// MaxStreamFrame bytes; the peer's FIN becomes the sink's End.
// A failed sink is a broken handler stream: the connection is reset.
type sinkStage struct {
	s    *Session
	sink Sink
}

func (s sinkStage) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		n := min(len(p)-done, MaxStreamFrame)
		if err := s.sink.Data(p[done : done+n]); err != nil {
			s.s.Abort(err)
			return done, err
		}
		done += n
	}
	return done, nil
}

func (s sinkStage) CloseWrite() error {
	if err := s.sink.End(); err != nil {
		s.s.Abort(err)
		return err
	}
	return nil
}
