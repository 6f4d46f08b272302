package server

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// Streams opened ahead that end before they serve: no connection is lost
// or served twice. Each connection ends once, with an event: served
// (PEER_CLOSED, its bytes echoed, taken once), or reset as HANDLER_GONE by
// the one stream it was given over to, which then broke. The window
// between a ready stream's claim and its opened message is aimed at in
// internal/service (ready_claimed_test.go), with a hook; here real
// clients race the daemon.

// connFate is one connection's events.
type connFate struct {
	seq    uint64 // of its connection_opened
	port   uint32
	taken  []string
	closed *listenerdv1.ConnectionClosed
}

// ledger follows a listener's events from its start.
type ledger struct {
	mu    sync.Mutex
	conns map[string]*connFate // by connection id
	err   error
}

func follow(t *testing.T, d *testDaemon, lid string) *ledger {
	t.Helper()
	ctx, cancel := context.WithCancel(testContext(t))
	zero := uint64(0)
	w, err := d.unix.WatchEvents(ctx, &listenerdv1.WatchEventsRequest{ListenerIds: []string{lid}, AfterSequence: &zero})
	if err != nil {
		t.Fatal(err)
	}
	l := &ledger{conns: map[string]*connFate{}}
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for {
			r, err := w.Recv()
			if err != nil {
				l.mu.Lock()
				l.err = err
				l.mu.Unlock()
				return
			}
			l.mu.Lock()
			for _, ev := range r.GetEvents() {
				switch {
				case ev.GetConnectionOpened() != nil:
					o := ev.GetConnectionOpened()
					l.conns[o.GetConnectionId()] = &connFate{seq: ev.GetSequence(), port: o.GetTuple().GetRemotePort()}
				case ev.GetConnectionTaken() != nil:
					if f := l.conns[ev.GetConnectionTaken().GetConnectionId()]; f != nil {
						f.taken = append(f.taken, ev.GetConnectionTaken().GetHandlerId())
					}
				case ev.GetConnectionClosed() != nil:
					if f := l.conns[ev.GetConnectionClosed().GetConnectionId()]; f != nil {
						if f.closed != nil {
							l.err = fmt.Errorf("%s closed twice", ev.GetConnectionClosed().GetConnectionId())
						}
						f.closed = ev.GetConnectionClosed()
					}
				}
			}
			l.mu.Unlock()
		}
	}()
	return l
}

// waitClosed waits until the connection of each peer (the latest on its
// port: ports are reused) has closed, and returns them by the peer's
// port.
func (l *ledger) waitClosed(t *testing.T, out ...[]peerOut) map[uint32]*connFate {
	t.Helper()
	var byPort map[uint32]*connFate
	testkit.Eventually(t, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		byPort = map[uint32]*connFate{}
		for _, f := range l.conns {
			if g := byPort[f.port]; g == nil || g.seq < f.seq {
				cp := *f // the watch goes on: a copy
				cp.taken = slices.Clone(f.taken)
				byPort[f.port] = &cp
			}
		}
		for _, ps := range out {
			for _, p := range ps {
				if f := byPort[p.port]; p.port != 0 && (f == nil || f.closed == nil) {
					return l.err != nil
				}
			}
		}
		return true
	}, "the peers' connections closed")
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		t.Fatal(l.err)
	}
	return byPort
}

// serveStream serves one connection on s, the opened message read
// already: echoes the peer's bytes, ends, and waits for closed.
func serveStream(s listenerdv1.ListenerService_ServeConnectionClient) error {
	var got []byte
	for {
		m, err := s.Recv()
		if err != nil {
			return err
		}
		if m.GetEnd() != nil {
			break
		}
		got = append(got, m.GetData()...)
	}
	for _, m := range []*listenerdv1.ServeConnectionRequest{
		{Kind: &listenerdv1.ServeConnectionRequest_Data{Data: got}},
		{Kind: &listenerdv1.ServeConnectionRequest_End{End: &listenerdv1.End{}}},
	} {
		if err := s.Send(m); err != nil {
			return err
		}
	}
	m, err := s.Recv()
	if err != nil || m.GetClosed() == nil {
		return fmt.Errorf("closed: %v, %v", m, err)
	}
	return nil
}

// group runs goroutines and collects their unexpected errors.
type group struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
}

func (g *group) Go(f func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := f(); err != nil {
			g.mu.Lock()
			g.errs = append(g.errs, err)
			g.mu.Unlock()
		}
	}()
}

// stopAndWait ends the test's streams (stop) and waits for the
// goroutines.
func (g *group) stopAndWait(t *testing.T, stop context.CancelFunc) {
	stop()
	g.wait(t)
}

func (g *group) wait(t *testing.T) {
	t.Helper()
	g.wg.Wait()
	for _, err := range g.errs {
		t.Error(err)
	}
}

// attachOn attaches a handler whose attach stream lives on ctx.
func attachOn(t *testing.T, ctx context.Context, c listenerdv1.ListenerServiceClient, ref string, max uint32) *handler {
	t.Helper()
	st, err := c.AttachHandler(ctx, &listenerdv1.AttachHandlerRequest{ListenerId: ref, MaxConnections: max, Label: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	first, err := st.Recv()
	if err != nil || first.GetAttached() == nil {
		t.Fatalf("attach: %v, %v", first, err)
	}
	return &handler{t: t, c: c, id: first.GetAttached().GetHandlerId(), offers: st}
}

// serveOffers takes and serves every offer h gets until its attach stream
// ends. lenient: h may go away meanwhile, and its takes and streams fail.
func (h *handler) serveOffers(g *group, ctx context.Context, lenient bool) {
	g.Go(func() error {
		for {
			o, err := h.offers.Recv()
			if err != nil {
				return nil // the test is over, or h went
			}
			g.Go(func() error {
				err := h.serveOffer(ctx, o.GetOffer().GetConnectionId())
				if lenient {
					return nil
				}
				return err
			})
		}
	})
}

func (h *handler) serveOffer(ctx context.Context, id string) error {
	s, err := h.c.ServeConnection(ctx)
	if err != nil {
		return err
	}
	if err := s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Take{
		Take: &listenerdv1.Take{ConnectionId: id, HandlerId: h.id}}}); err != nil {
		return err
	}
	if m, err := s.Recv(); err != nil || m.GetOpened() == nil {
		return fmt.Errorf("%s: opened: %v, %v", id, m, err)
	}
	if err := serveStream(s); err != nil {
		return fmt.Errorf("%s taken by %s: %w", id, h.id, err)
	}
	return nil
}

// peerOut is what a peer saw: its own bytes back, or the connection's end.
type peerOut struct {
	port   uint32
	echoed bool
	err    error
}

// peers dials n connections at once, each writing its own message and
// reading until the daemon's end.
// It may run on any goroutine.
func peers(addr string, n int) []peerOut {
	out := make([]peerOut, n)
	var wg sync.WaitGroup
	for i := range n {
		nc, err := net.Dial("tcp", addr)
		for try := 0; err != nil && try < 3; try++ {
			// Seen rarely on a loaded machine: reset at connect, before
			// the daemon accepts (no event). Not what is tested here.
			nc, err = net.Dial("tcp", addr)
		}
		if err != nil {
			out[i].err = err
			continue
		}
		c := nc.(*net.TCPConn)
		out[i].port = remotePort(c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			msg := fmt.Sprintf("peer %d", i)
			if _, err := c.Write([]byte(msg)); err != nil {
				out[i].err = err
				return
			}
			_ = c.CloseWrite()
			b, err := io.ReadAll(c)
			out[i].echoed, out[i].err = string(b) == msg, err
		}()
	}
	wg.Wait()
	return out
}

// check says each connection ended once, as allowed: served (PEER_CLOSED,
// echoed, taken once), or, if mayBreak, given over once to a handler in
// mayBreak whose stream then broke (HANDLER_GONE). It returns how many
// ended each way.
func check(t *testing.T, out []peerOut, fates map[uint32]*connFate, mayBreak map[string]bool) (served, broke int) {
	t.Helper()
	for _, p := range out {
		f := fates[p.port]
		switch {
		case p.port == 0:
			t.Errorf("dial: %v", p.err)
		case f == nil || f.closed == nil:
			t.Errorf("peer on port %d: no connection_closed", p.port)
		case f.closed.GetReason() == listenerdv1.CloseReason_CLOSE_REASON_PEER_CLOSED && len(f.taken) == 1 && p.echoed:
			served++
		case f.closed.GetReason() == listenerdv1.CloseReason_CLOSE_REASON_HANDLER_GONE && len(f.taken) == 1 && mayBreak[f.taken[0]]:
			// The peer may have had its echo: the stream broke before the
			// daemon closed the connection.
			broke++
		default:
			t.Errorf("peer on port %d: echoed %v (%v), taken by %v, closed %v", p.port, p.echoed, p.err, f.taken, f.closed)
		}
	}
	return served, broke
}

// parkAll opens n ready streams for h on ctx; each serves the connection
// it gets, if any. A stream that ends without one is fine; lenient: h
// may go away meanwhile, and its streams fail.
func (h *handler) parkAll(g *group, ctx context.Context, n int, lenient bool) {
	for range n {
		s := h.ready(ctx)
		g.Go(func() error {
			m, err := s.Recv()
			if err != nil || m.GetOpened() == nil {
				return nil // ended (EOF) or cancelled: served nothing
			}
			if err := serveStream(s); err != nil && ctx.Err() == nil && !lenient {
				return fmt.Errorf("%s on a ready stream of %s: %w", m.GetOpened().GetConnectionId(), h.id, err)
			}
			return nil
		})
	}
}

// A handler that detaches, or dies (its client connection closes), while
// it holds streams ready and connections arrive: its parked streams end,
// the connections go to the other handler. Detached, its streams that
// got a connection still serve it; dead, they reset it (HANDLER_GONE),
// having been given it.
func TestReadyRequeueHandlerGoesUnderLoad(t *testing.T) {
	for _, dies := range []bool{false, true} {
		name := map[bool]string{false: "detaches", true: "dies"}[dies]
		t.Run(name, func(t *testing.T) {
			d := startRun(t, Config{Ephemeral: true})
			addr := createStream(t, d, "go")
			book := follow(t, d, "go")
			var g group
			tctx, stop := context.WithCancel(testContext(t))
			defer g.stopAndWait(t, stop)

			// a on its own client connection: dying closes it; detaching
			// ends its attach stream.
			conn := testkit.DialGRPCUnix(t, d.socket)
			ac := listenerdv1.NewListenerServiceClient(conn)
			actx, detach := context.WithCancel(tctx)
			defer detach()
			a := attachOn(t, actx, ac, "go", 64)
			a.parkAll(&g, tctx, 24, true)
			a.serveOffers(&g, tctx, true)
			b := attachOn(t, tctx, d.unix, "go", 64)
			b.serveOffers(&g, tctx, false)

			// The peers dial at once; a goes when about half are in.
			var out []peerOut
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { defer wg.Done(); out = peers(addr, 48) }()
			testkit.Eventually(t, func() bool {
				book.mu.Lock()
				defer book.mu.Unlock()
				return len(book.conns) >= 24
			}, "half the peers in")
			if dies {
				_ = conn.Close()
			} else {
				detach()
			}
			wg.Wait()
			mayBreak := map[string]bool{}
			if dies {
				mayBreak[a.id] = true
			}
			served, broke := check(t, out, book.waitClosed(t, out), mayBreak)
			t.Logf("%d served, %d reset by a dead handler's streams", served, broke)

			// After it all, b alone serves.
			more := peers(addr, 4)
			fates := book.waitClosed(t, more)
			check(t, more, fates, nil)
			for _, p := range more {
				if f := fates[p.port]; f != nil && (len(f.taken) != 1 || f.taken[0] != b.id) {
					t.Errorf("after a went, peer on port %d taken by %v, want %s", p.port, f.taken, b.id)
				}
			}
		})
	}
}

// Many ready streams cancelled at once while connections arrive: each
// connection is served once, by the other handler or by a ready stream
// still open, or reset by the one cancelled stream it was given over to;
// none is lost, none served twice.
func TestReadyRequeueMassCancelUnderLoad(t *testing.T) {
	d := startRun(t, Config{Ephemeral: true})
	addr := createStream(t, d, "mass")
	book := follow(t, d, "mass")
	var g group
	tctx, stop := context.WithCancel(testContext(t))
	defer g.stopAndWait(t, stop)

	a := attachOn(t, tctx, d.unix, "mass", 64) // the oldest: ties go to it
	b := attachOn(t, tctx, d.unix, "mass", 64)
	a.serveOffers(&g, tctx, false)
	b.serveOffers(&g, tctx, false)
	cctx, cancelAll := context.WithCancel(tctx)
	defer cancelAll()
	a.parkAll(&g, cctx, 32, false)
	b.parkAll(&g, tctx, 8, false)

	var out []peerOut
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); out = peers(addr, 64) }()
	testkit.Eventually(t, func() bool {
		book.mu.Lock()
		defer book.mu.Unlock()
		return len(book.conns) >= 16
	}, "a quarter of the peers in")
	cancelAll()
	wg.Wait()
	served, broke := check(t, out, book.waitClosed(t, out), map[string]bool{a.id: true})
	t.Logf("%d served, %d reset by cancelled streams they were given to", served, broke)

	// And after it, connections are served as before, a's new streams
	// among them: nothing was left bound or counted.
	a.parkAll(&g, tctx, 4, false)
	more := peers(addr, 8)
	check(t, more, book.waitClosed(t, more), nil)
}

// A ready stream cancelled while idle leaves nothing behind: after many
// park-and-cancel rounds the handler (max_connections 2) may still park
// exactly 2, and serves 2 connections at once: its load is 0.
func TestReadyRequeueCancelIdleNoLeak(t *testing.T) {
	d := startRun(t, Config{Ephemeral: true})
	addr := createStream(t, d, "idle")
	book := follow(t, d, "idle")
	h := attach(t, d.unix, "idle", 2)
	for range 20 {
		ctx, cancel := context.WithCancel(testContext(t))
		s1, s2 := h.ready(ctx), h.ready(ctx)
		cancel()
		for _, s := range []listenerdv1.ListenerService_ServeConnectionClient{s1, s2} {
			// Refused if the daemon has not seen the last round's
			// cancels yet.
			if _, err := s.Recv(); status.Code(err) != codes.Canceled && status.Code(err) != codes.ResourceExhausted {
				t.Fatalf("cancelled ready stream: %v", err)
			}
		}
	}
	// The daemon sees the cancels in its own time: until it has, a
	// stream may be refused (RESOURCE_EXHAUSTED: no headers).
	var s1, s2 listenerdv1.ListenerService_ServeConnectionClient
	testkit.Eventually(t, func() bool {
		ctx, cancel := context.WithCancel(testContext(t))
		t.Cleanup(cancel)
		s1, s2 = h.ready(ctx), h.ready(ctx)
		h1, _ := s1.Header()
		h2, _ := s2.Header()
		if h1 != nil && h2 != nil {
			return true
		}
		cancel()
		return false
	}, "two streams parked")
	// Both parked: a third is refused.
	if _, err := h.ready(testContext(t)).Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a third stream ready with max_connections 2: %v, want RESOURCE_EXHAUSTED", err)
	}
	c1, c2 := testkit.Dial(t, addr), testkit.Dial(t, addr)
	o1, o2 := opened(t, s1), opened(t, s2)
	ports := map[uint32]bool{o1.GetTuple().GetRemotePort(): true, o2.GetTuple().GetRemotePort(): true}
	if !ports[remotePort(c1)] || !ports[remotePort(c2)] {
		t.Fatalf("opened %v and %v, want the peers on %d and %d", o1, o2, remotePort(c1), remotePort(c2))
	}
	for _, sc := range []struct {
		s listenerdv1.ListenerService_ServeConnectionClient
		o *listenerdv1.ConnectionOpened
	}{{s1, o1}, {s2, o2}} {
		c := c1
		if sc.o.GetTuple().GetRemotePort() == remotePort(c2) {
			c = c2
		}
		echoOnce(t, sc.s, c, "no leak")
	}
	fates := book.waitClosed(t, []peerOut{{port: remotePort(c1)}, {port: remotePort(c2)}})
	for _, f := range fates {
		if len(f.taken) != 1 || f.taken[0] != h.id {
			t.Errorf("connection on port %d taken by %v, want once by %s", f.port, f.taken, h.id)
		}
	}
}
