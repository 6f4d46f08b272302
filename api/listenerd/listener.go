package listenerd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// Listener is a net.Listener whose connections are accepted by the daemon:
// the daemon binds the port, applies the listener's limits, ACLs and
// queue, reports every connection in its events, and offers the
// connections to this process, which serves their bytes through the API.
// Several processes may attach to one listener; each connection goes to
// the least loaded.
type Listener struct {
	c      *Client
	id     string
	addr   net.Addr
	owned  bool // made by Listen: Close closes it on the daemon too
	handle string

	ctx    context.Context
	cancel context.CancelFunc
	opened chan *Conn // from the streams opened ahead, and the offers taken
	// A take that failed (not NotFound), for Accept to return.
	takeErrs chan error
	closing  chan struct{}
	// Streams opened ahead: their goroutines, and what cancels those still
	// parked if the daemon does not end them after Close.
	readyWG   sync.WaitGroup
	readyMu   sync.Mutex // readyWG.Add only while !readyShut, so Close's Wait sees every park
	readyShut bool
	want      int32 // streams to keep parked: a served one parks again below it
	// Streams opened ahead that serve no connection (opening, parked, or
	// parking again), counted in the client's idleReady too: at most want,
	// and within the client connection's room (Client.reserveIdle).
	idle       atomic.Int32
	fixed      int          // streams reserved on the client connection: the attach stream and the concurrency
	parked     atomic.Int32 // streams the daemon said are parked (its headers came, or closed on a reused one)
	opens      atomic.Int64 // streams opened ahead (a reused one counts once)
	offered    atomic.Int64 // offers received: connections that came the other way
	readyAbort context.Context
	abortReady context.CancelFunc
	handed     chan *TCPConn // handover: the sockets themselves
	side       *net.UnixConn
	done       chan struct{} // the attach stream ended
	err        error         // why, once done is closed

	closeOnce sync.Once

	sideMu     sync.Mutex // one message at a time on the side connection
	sideClosed bool
	sideConns  int // handed-over connections not closed yet
}

// ListenOption changes what Listen asks for.
type ListenOption func(*listenConfig)

type listenConfig struct {
	noHandover bool
	ready      int
	name       string
	max        int
	label      string
	limits     *listenerdv1.Limits
	handler    *listenerdv1.StreamHandler
}

// WithoutHandover serves this listener's connections through the API
// even when the daemon is local (see Options.NoHandover).
func WithoutHandover() ListenOption { return func(c *listenConfig) { c.noHandover = true } }

// WithName names the listener.
func WithName(name string) ListenOption { return func(c *listenConfig) { c.name = name } }

// WithLimits sets the listener's limits.
func WithLimits(l *listenerdv1.Limits) ListenOption { return func(c *listenConfig) { c.limits = l } }

// WithConcurrency sets how many connections this process serves at once
// (0: the daemon's default, 64).
func WithConcurrency(n int) ListenOption { return func(c *listenConfig) { c.max = n } }

// WithReadyStreams sets how many connection streams this process keeps
// open ahead on the daemon (0: the default, see defaultReady; negative:
// none). The daemon binds a new connection chosen for this process to one
// of them and opens it at once: no offer, no take round trip. Without
// them (or with a daemon that predates them), each connection is offered
// and taken. They share the client connection's 128 streams with the
// connections being served and the attach streams, of every listener on
// the client: fewer are kept parked when the others leave no room for
// them, so that a take always finds a stream.
func WithReadyStreams(n int) ListenOption { return func(c *listenConfig) { c.ready = n } }

// defaultReady is how many streams a listener keeps open ahead unless
// told otherwise, at most: no more than the concurrency, nor than the
// client connection's streams leave beside it (maxStreams less the
// concurrency and the attach stream), so that a take never waits for a
// stream. With several listeners on one client, the client's room bounds
// them all (Client.reserveIdle).
const defaultReady = 64

// maxStreams is how many streams the daemon serves on one client
// connection at once.
const maxStreams = 128

// WithLabel labels this process in the daemon's events.
func WithLabel(label string) ListenOption { return func(c *listenConfig) { c.label = label } }

// WithStream sets the stream handler's options (its claim timeout).
func WithStream(h *listenerdv1.StreamHandler) ListenOption {
	return func(c *listenConfig) { c.handler = h }
}

// Listen creates a listener on the daemon at address ("host:port"; port 0
// takes an ephemeral port) whose connections this process serves, like
// net.Listen("tcp", address). Close closes it on the daemon.
func (c *Client) Listen(ctx context.Context, address string, opts ...ListenOption) (*Listener, error) {
	var cfg listenConfig
	for _, o := range opts {
		o(&cfg)
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("listenerd: listen %q: %w", address, err)
	}
	p, err := net.LookupPort("tcp", port)
	if err != nil {
		return nil, fmt.Errorf("listenerd: listen %q: %w", address, err)
	}
	sh := cfg.handler
	if sh == nil {
		sh = &listenerdv1.StreamHandler{}
	}
	r, err := c.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: cfg.name, Spec: &listenerdv1.ListenerSpec{
		Host: host, Port: uint32(p), Limits: cfg.limits,
		Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Stream{Stream: sh}},
	}})
	if err != nil {
		return nil, err
	}
	id := r.GetListener().GetId()
	l, err := c.attach(ctx, id, cfg)
	if err != nil {
		_, _ = c.CloseListener(context.WithoutCancel(ctx), &listenerdv1.CloseListenerRequest{Id: id})
		return nil, err
	}
	l.owned = true
	return l, nil
}

// Attach attaches this process to an existing stream listener (by id or
// name) and returns it as a net.Listener. Close detaches; the listener
// stays.
func (c *Client) Attach(ctx context.Context, listener string, opts ...ListenOption) (*Listener, error) {
	var cfg listenConfig
	for _, o := range opts {
		o(&cfg)
	}
	return c.attach(ctx, listener, cfg)
}

func (c *Client) attach(ctx context.Context, ref string, cfg listenConfig) (*Listener, error) {
	handover := c.handover && !cfg.noHandover
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	st, first, err := c.attachStream(lctx, ref, cfg, handover)
	if handover && status.Code(err) == codes.FailedPrecondition && strings.Contains(status.Convert(err).Message(), "handover") {
		handover = false // a daemon without a side socket: bytes, then
		st, first, err = c.attachStream(lctx, ref, cfg, false)
	}
	if err != nil {
		cancel()
		return nil, err
	}
	att := first.GetAttached()
	if att.GetHandoverPath() == "" {
		handover = false // a daemon that does not hand over: bytes, then
	}
	g, err := c.GetListener(ctx, &listenerdv1.GetListenerRequest{Id: att.GetListenerId()})
	if err != nil {
		cancel()
		return nil, err
	}
	l := &Listener{c: c, id: att.GetListenerId(), handle: att.GetHandlerId(), ctx: lctx, cancel: cancel,
		opened: make(chan *Conn), takeErrs: make(chan error), closing: make(chan struct{}), done: make(chan struct{})}
	l.readyAbort, l.abortReady = context.WithCancel(context.Background())
	l.addr = tcpAddr(g.GetListener().GetStatus().GetBoundAddress())
	if handover {
		side, err := dialSide(att.GetHandoverPath(), att.GetHandoverSecret())
		if err != nil {
			cancel()
			return nil, fmt.Errorf("listenerd: handover: %w", err)
		}
		l.side, l.handed = side, make(chan *TCPConn)
		go l.readHanded()
	}
	l.fixed = 1
	if !handover {
		l.fixed += cmp.Or(cfg.max, 64)
	}
	c.fixed.Add(int64(l.fixed))
	go l.readOffers(st)
	if !handover {
		n := cfg.ready
		if n == 0 {
			n = min(defaultReady, l.fixed-1, maxStreams-l.fixed)
		}
		l.want = int32(max(n, 0))
		for range l.want {
			if !l.reserveIdle() {
				break
			}
			l.readyWG.Add(1)
			go l.ready(nil)
		}
	}
	return l, nil
}

// parking is a stream opened ahead, or one whose connection closed and
// that serves the next.
type parking struct {
	s        listenerdv1.ListenerService_ServeConnectionClient
	cancel   context.CancelFunc
	fresh    bool // opened for this park: its take asks for reuse
	endMarks bool // the daemon takes our end or reset as the mark (Take.end_marks)
	// doneMarks: only our end with done, or reset: a plain end asks for
	// the take after closed (the daemon's header says "2").
	doneMarks bool
	marked    bool // the connection it served was ended or reset: no take answers its closed
}

// reserveIdle counts one more stream opened ahead and serving nothing, if
// fewer than want are and the client connection has room for it.
func (l *Listener) reserveIdle() bool {
	for {
		n := l.idle.Load()
		if n >= l.want {
			return false
		}
		if !l.c.reserveIdle() {
			return false
		}
		if l.idle.CompareAndSwap(n, n+1) {
			return true
		}
		l.c.idleReady.Add(-1)
	}
}

// unidle uncounts a stream reserveIdle counted: it serves a connection
// now, or it ended.
func (l *Listener) unidle() {
	l.idle.Add(-1)
	l.c.idleReady.Add(-1)
}

// addReady counts one more stream parking, unless Close has begun.
func (l *Listener) addReady() bool {
	l.readyMu.Lock()
	defer l.readyMu.Unlock()
	if l.readyShut {
		return false
	}
	l.readyWG.Add(1)
	return true
}

// reuse answers the closed of a connection served on a reused stream,
// which the daemon has parked again: the stream goes on serving while
// fewer than want are parked (it is returned, counted in readyWG, for its
// goroutine to park); else it is released (nil).
func (l *Listener) reuse(p *parking) *parking {
	if l.parked.Load() < l.want && l.reserveIdle() {
		if l.addReady() {
			return p
		}
		l.unidle()
	}
	l.release(p)
	return nil
}

// release ends a reused stream's parking. A connection the daemon opened
// on it before the release came is served all the same, and the stream
// ends after it.
func (l *Listener) release(p *parking) {
	var err error
	if p.endMarks && !p.marked {
		// With end marks a release is no mark: a take answers the closed
		// first.
		err = p.s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Take{
			Take: &listenerdv1.Take{HandlerId: l.handle}}})
	}
	if err == nil {
		err = p.s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Release{Release: &listenerdv1.Release{}}})
	}
	var m *listenerdv1.ServeConnectionResponse
	if err == nil {
		m, err = p.s.Recv()
	}
	if err != nil || m.GetOpened() == nil {
		p.cancel()
		return
	}
	c := newConn(nil, p.s, p.cancel, m.GetOpened())
	l.deliver(c)
	c.recv() // the stream ends after it
}

// deliver hands a connection to Accept.
func (l *Listener) deliver(c *Conn) {
	select {
	case l.opened <- c:
	case <-l.closing:
		// Bound to this process before its detach reached the daemon,
		// and never accepted: reset, as a closed socket's backlog is.
		_ = c.Reset()
	}
}

// ready parks a stream on the daemon (p, or a new one when p is nil): it
// waits there for a connection, hands it to Accept and reads its stream
// (Conn.serve), in this goroutine: no hand-over to another per
// connection. The stream parks again once its connection has closed, so
// that a stream serves connection after connection; a new one is opened
// when fewer than half of want are parked. It stops when the daemon ends
// the stream (the handler detached, the listener closed) or refuses it (a
// daemon that predates ready streams says INVALID_ARGUMENT): the
// connections then come as offers. The caller has counted it in readyWG
// and in idle (reserveIdle); it is counted in readyWG while it parks and
// delivers, and in idle while it parks, not while it serves a connection.
func (l *Listener) ready(p *parking) {
	for {
		c, err := l.readyOne(p)
		l.unidle()
		if err != nil || c == nil {
			l.readyWG.Done()
			return
		}
		if l.parked.Load() < l.want/2 && l.reserveIdle() {
			if l.addReady() {
				// On the client's reused goroutines: a new one grows its
				// stack in gRPC's calls.
				l.c.recvers.Go(l.readyNew)
			} else {
				l.unidle()
			}
		}
		l.deliver(c)
		l.readyWG.Done() // Close waits for a connection bound to it to be accepted or reset
		if p = c.recvReused(); p == nil {
			return
		}
	}
}

// readyNew parks a new stream (see ready).
func (l *Listener) readyNew() { l.ready(nil) }

// readyOne parks p (a new stream when nil) and waits for its connection;
// nil when the daemon ended the stream.
func (l *Listener) readyOne(p *parking) (*Conn, error) {
	if p == nil {
		// A connection outlives its listener's Close, as a net.Conn does;
		// a stream still parked is cancelled if the daemon does not end
		// it.
		ctx, cancel := context.WithCancel(context.WithoutCancel(l.ctx))
		s, err := l.c.ServeConnection(ctx)
		if err != nil {
			cancel()
			return nil, err
		}
		l.opens.Add(1)
		p = &parking{s: s, cancel: cancel, fresh: true}
	}
	stop := context.AfterFunc(l.readyAbort, p.cancel)
	// A new stream's take asks for reuse, with end marks; a reused one's
	// answers the closed before it (the daemon parked it again before
	// that closed), unless our end or reset did (end marks).
	var err error
	if p.fresh || !p.endMarks || !p.marked {
		err = p.s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Take{
			Take: &listenerdv1.Take{HandlerId: l.handle, Reuse: p.fresh, EndMarks: p.fresh}}})
	}
	var m *listenerdv1.ServeConnectionResponse
	if err == nil {
		if md, herr := p.s.Header(); herr == nil {
			if p.fresh {
				// An older daemon does not say it, and needs the take.
				v := md.Get(endMarksHeader)
				p.endMarks = len(v) > 0
				p.doneMarks = p.endMarks && v[0] != "1"
			}
			l.parked.Add(1)
			defer l.parked.Add(-1)
		}
		m, err = p.s.Recv()
	}
	if !stop() || err != nil || m.GetOpened() == nil {
		p.cancel()
		if errors.Is(err, io.EOF) {
			err = nil
		}
		return nil, err
	}
	c := newConn(l, p.s, p.cancel, m.GetOpened())
	c.endMarks, c.doneMarks = p.endMarks, p.doneMarks
	return c, nil
}

// endMarksHeader, in a ServeConnection stream's response headers, says
// the daemon takes our end or reset as the mark (Take.end_marks).
const endMarksHeader = "listenerd-end-marks"

func (c *Client) attachStream(ctx context.Context, ref string, cfg listenConfig, handover bool) (listenerdv1.ListenerService_AttachHandlerClient, *listenerdv1.AttachHandlerResponse, error) {
	st, err := c.AttachHandler(ctx, &listenerdv1.AttachHandlerRequest{ListenerId: ref, MaxConnections: uint32(cfg.max),
		Label: cfg.label, Handover: handover})
	if err != nil {
		return nil, nil, err
	}
	first, err := st.Recv()
	if err != nil {
		return nil, nil, err
	}
	return st, first, nil
}

func (l *Listener) readOffers(st listenerdv1.ListenerService_AttachHandlerClient) {
	defer close(l.done)
	for {
		r, err := st.Recv()
		if err != nil {
			l.err = err
			return
		}
		if o := r.GetOffer(); o != nil {
			l.offered.Add(1)
			// Taken on a goroutine of its own, not Accept's: its stream
			// may wait for room on the client connection, held by
			// connections that wait for Accept (issue 15). The daemon
			// offers no more than the concurrency at once. After Close the
			// offer is left to the daemon, which gives it to another
			// handler or drops it.
			if l.addReady() {
				l.c.recvers.Go(func() { l.takeOffer(o) })
			}
		}
	}
}

// Accept waits for the daemon's next connection and takes it. The
// net.Conn it returns is a *Conn.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case h := <-l.handed:
		return h, nil
	case c := <-l.opened:
		return c, nil
	case err := <-l.takeErrs:
		if l.ctx.Err() != nil {
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: net.ErrClosed}
		}
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: err}
	case <-l.done:
		if l.ctx.Err() != nil {
			return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: net.ErrClosed}
		}
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: l.err}
	}
}

// takeOffer takes an offered connection and hands it to Accept (or its
// error), then reads its stream, in this goroutine. The caller has counted
// it in readyWG: Close waits for it to be accepted or reset.
func (l *Listener) takeOffer(o *listenerdv1.Offer) {
	c, err := l.take(o)
	if err != nil {
		if status.Code(err) != codes.NotFound { // NotFound: gone meanwhile (its peer left, or it timed out)
			select {
			case l.takeErrs <- err:
			case <-l.closing:
			}
		}
		l.readyWG.Done()
		return
	}
	l.deliver(c)
	l.readyWG.Done()
	c.recv()
}

func (l *Listener) take(o *listenerdv1.Offer) (*Conn, error) {
	// A connection outlives its listener's Close, as a net.Conn does.
	ctx, cancel := context.WithCancel(context.WithoutCancel(l.ctx))
	// Past Close's bound, a take still waiting is cancelled.
	stop := context.AfterFunc(l.readyAbort, cancel)
	defer stop()
	s, err := l.c.ServeConnection(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	if err := s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Take{
		Take: &listenerdv1.Take{ConnectionId: o.GetConnectionId(), HandlerId: l.handle}}}); err != nil {
		cancel()
		return nil, err
	}
	m, err := s.Recv()
	if err != nil {
		cancel()
		return nil, err
	}
	if m.GetOpened() == nil {
		cancel()
		return nil, errors.New("listenerd: the daemon answered a take with something other than opened")
	}
	if !stop() {
		cancel()
		return nil, context.Canceled
	}
	return newConn(nil, s, cancel, m.GetOpened()), nil
}

// Close stops accepting: it detaches from the listener and, for a listener
// made by Listen, closes it on the daemon (its open connections drain, as
// CloseListener's default says). Connections already accepted go on. The
// daemon ends the streams kept open ahead once it sees the detach; a
// connection it had bound to one just before, and that Accept never
// returned, is reset, as a closed socket's backlog is.
func (l *Listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.closing)
		l.readyMu.Lock()
		l.readyShut = true
		l.readyMu.Unlock()
		l.cancel()
		<-l.done
		// The daemon ends the streams parked ahead once it has seen the
		// detach; past a bound, they are cancelled.
		readyDone := make(chan struct{})
		go func() { l.readyWG.Wait(); close(readyDone) }()
		t := time.NewTimer(rpcTimeout)
		select {
		case <-readyDone:
		case <-t.C:
			l.abortReady()
			<-readyDone
		}
		t.Stop()
		l.abortReady()
		l.c.fixed.Add(-int64(l.fixed))
		if l.side != nil {
			// Accepted sockets go on, and report their own close; the side
			// connection goes once the last one has.
			l.sideMu.Lock()
			l.sideClosed = true
			if l.sideConns <= 0 {
				l.side.Close()
			}
			l.sideMu.Unlock()
		}
		if l.owned {
			ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
			defer cancel()
			_, err = l.c.CloseListener(ctx, &listenerdv1.CloseListenerRequest{Id: l.id})
		}
	})
	return err
}

// Addr is the address the daemon bound.
func (l *Listener) Addr() net.Addr { return l.addr }

// ID is the listener's id on the daemon.
func (l *Listener) ID() string { return l.id }

// HandlerID is this process's handler id on the daemon, as its events
// name it.
func (l *Listener) HandlerID() string { return l.handle }

// SetMaxConnections changes the listener's max_connections at runtime
// (negative: unlimited).
func (l *Listener) SetMaxConnections(ctx context.Context, n int) error {
	lim := &listenerdv1.Limits{}
	if n >= 0 {
		m := uint32(n)
		lim.MaxConnections = &m
	}
	_, err := l.c.UpdateListener(ctx, &listenerdv1.UpdateListenerRequest{
		Listener:   &listenerdv1.Listener{Id: l.id, Spec: &listenerdv1.ListenerSpec{Limits: lim}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"spec.limits.max_connections"}},
	})
	return err
}

func tcpAddr(hostport string) *net.TCPAddr {
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		return &net.TCPAddr{}
	}
	return net.TCPAddrFromAddrPort(ap)
}
