package server

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// ready opens a stream ahead for h: a take that names only the handler.
func (h *handler) ready(ctx context.Context) listenerdv1.ListenerService_ServeConnectionClient {
	h.t.Helper()
	s, err := h.c.ServeConnection(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Take{
		Take: &listenerdv1.Take{HandlerId: h.id}}}); err != nil {
		h.t.Fatal(err)
	}
	// The headers come once the stream is parked (or it failed: Recv
	// says why).
	_, _ = s.Header()
	return s
}

// opened waits for the opened message on a ready stream.
func opened(t *testing.T, s listenerdv1.ListenerService_ServeConnectionClient) *listenerdv1.ConnectionOpened {
	t.Helper()
	m, err := s.Recv()
	if err != nil || m.GetOpened() == nil {
		t.Fatalf("opened: %v, %v", m, err)
	}
	return m.GetOpened()
}

// echoOnce sends what the peer wrote back, then ends both sides.
func echoOnce(t *testing.T, s listenerdv1.ListenerService_ServeConnectionClient, peer *net.TCPConn, msg string) {
	t.Helper()
	if _, err := peer.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	_ = peer.CloseWrite()
	got := recvUntilEnd(t, s)
	for _, m := range []*listenerdv1.ServeConnectionRequest{
		{Kind: &listenerdv1.ServeConnectionRequest_Data{Data: got}},
		{Kind: &listenerdv1.ServeConnectionRequest_End{End: &listenerdv1.End{}}},
	} {
		if err := s.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	if back, err := io.ReadAll(peer); err != nil || string(back) != msg {
		t.Fatalf("peer read %q, %v; want %q", back, err, msg)
	}
	if m, err := s.Recv(); err != nil || m.GetClosed().GetReason() != listenerdv1.CloseReason_CLOSE_REASON_PEER_CLOSED {
		t.Fatalf("closed: %v, %v", m, err)
	}
}

// remotePort is the peer's side of a connection, as the daemon reports it.
func remotePort(c *net.TCPConn) uint32 { return uint32(c.LocalAddr().(*net.TCPAddr).Port) }

// A stream opened ahead serves the next connection with no offer and no
// take; the connection_taken event names the handler.
func TestStreamReadyServes(t *testing.T) {
	d := startRun(t, Config{Ephemeral: true})
	addr := createStream(t, d, "ready")
	h := attach(t, d.unix, "ready", 4)
	s := h.ready(testContext(t))

	c := testkit.Dial(t, addr)
	o := opened(t, s)
	if o.GetTuple().GetRemotePort() != remotePort(c) {
		t.Fatalf("opened %v for the peer on port %d", o, remotePort(c))
	}
	echoOnce(t, s, c, "hello ahead")

	// The next connection, with no stream ready, is offered: the attach
	// stream's first offer is for it, so none was sent for the first.
	c2 := testkit.Dial(t, addr)
	m, err := h.offers.Recv()
	if err != nil || m.GetOffer().GetTuple().GetRemotePort() != remotePort(c2) {
		t.Fatalf("offer %v, %v; want one for the second connection (port %d)", m, err, remotePort(c2))
	}

	zero := uint64(0)
	w, err := d.unix.WatchEvents(testContext(t), &listenerdv1.WatchEventsRequest{ListenerIds: []string{"ready"}, AfterSequence: &zero})
	if err != nil {
		t.Fatal(err)
	}
	for {
		r, err := w.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range r.GetEvents() {
			if tk := ev.GetConnectionTaken(); tk != nil && tk.GetConnectionId() == o.GetConnectionId() {
				if tk.GetHandlerId() != h.id {
					t.Fatalf("taken by %q, want %q", tk.GetHandlerId(), h.id)
				}
				return
			}
		}
	}
}

// Streams ready are not connections: a handler with max_connections 1
// and a stream ready serves a connection; with that connection open, the
// next one waits (the stream ready for it is not served) until the first
// ends.
func TestStreamReadyNotCounted(t *testing.T) {
	d := startRun(t, Config{Ephemeral: true})
	addr := createStream(t, d, "one")
	h := attach(t, d.unix, "one", 1)

	s1 := h.ready(testContext(t))
	c1 := testkit.Dial(t, addr)
	opened(t, s1)

	s2 := h.ready(testContext(t))
	// At most max_connections streams ready at once.
	if _, err := h.ready(testContext(t)).Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a second stream ready with max_connections 1: %v, want RESOURCE_EXHAUSTED", err)
	}
	c2 := testkit.Dial(t, addr)
	testkit.Eventually(t, func() bool {
		g, err := d.unix.GetListener(testContext(t), &listenerdv1.GetListenerRequest{Id: "one"})
		return err == nil && g.GetListener().GetStatus().GetActiveConnections() == 2
	}, "both connections admitted")
	// c2 is admitted and waits: the handler is at its limit.
	echoOnce(t, s1, c1, "first")
	o := opened(t, s2)
	if o.GetTuple().GetRemotePort() != remotePort(c2) {
		t.Fatalf("opened %v, want the second connection (port %d)", o, remotePort(c2))
	}
	echoOnce(t, s2, c2, "second")
}

// A handler that detaches ends its streams ready cleanly; connections
// that come next go to the other handler. A stream ready that its handler
// cancels loses no connection either.
func TestStreamReadyEndsOnDetach(t *testing.T) {
	d := startRun(t, Config{Ephemeral: true})
	addr := createStream(t, d, "two")
	ctx, detach := context.WithCancel(testContext(t))
	st, err := d.unix.AttachHandler(ctx, &listenerdv1.AttachHandlerRequest{ListenerId: "two", MaxConnections: 4})
	if err != nil {
		t.Fatal(err)
	}
	first, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	a := &handler{t: t, c: d.unix, id: first.GetAttached().GetHandlerId(), offers: st}
	b := attach(t, d.unix, "two", 4)
	var parked []listenerdv1.ListenerService_ServeConnectionClient
	for range 3 {
		parked = append(parked, a.ready(testContext(t)))
	}
	cctx, cancelOne := context.WithCancel(testContext(t))
	cancelled := a.ready(cctx)

	// Until a's detach the streams stay parked; cancelling one gives its
	// place back to nobody but loses nothing.
	cancelOne()
	if _, err := cancelled.Recv(); status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled stream: %v", err)
	}
	detach()
	for i, s := range parked {
		if m, err := s.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("parked stream %d: %v, %v; want a clean end", i, m, err)
		}
	}
	for range 3 {
		c := testkit.Dial(t, addr)
		s := b.take()
		echoOnce(t, s, c, "to b")
	}
	// And a take naming the detached handler is refused.
	if _, err := a.ready(testContext(t)).Recv(); status.Code(err) != codes.NotFound {
		t.Fatalf("ready for a detached handler: %v, want NOT_FOUND", err)
	}
}

// A handler with streams ready and one taking offers share a listener:
// each new connection goes to the least loaded, the first through its
// streams ready, the second through offers.
func TestStreamReadyAndOffersMixed(t *testing.T) {
	d := startRun(t, Config{Ephemeral: true})
	addr := createStream(t, d, "mix")
	a := attach(t, d.unix, "mix", 8) // the oldest: ties go to it
	b := attach(t, d.unix, "mix", 8)
	var ready []listenerdv1.ListenerService_ServeConnectionClient
	for range 3 {
		ready = append(ready, a.ready(testContext(t)))
	}
	type served struct {
		c *net.TCPConn
		s listenerdv1.ListenerService_ServeConnectionClient
	}
	var all []served
	for i := range 6 {
		c := testkit.Dial(t, addr)
		var s listenerdv1.ListenerService_ServeConnectionClient
		if i%2 == 0 { // loads equal: a, on the stream ready longest
			s = ready[i/2]
			if o := opened(t, s); o.GetTuple().GetRemotePort() != remotePort(c) {
				t.Fatalf("connection %d: a's stream opened %v, want port %d", i, o, remotePort(c))
			}
		} else { // a has one more: b, by an offer
			s = b.take()
		}
		all = append(all, served{c, s})
	}
	for i, sv := range all {
		echoOnce(t, sv.s, sv.c, strings.Repeat("x", i+1))
	}
}

// Malformed takes are refused with the field named; a ready take names an
// attached handler that serves bytes.
func TestStreamReadyBadTakes(t *testing.T) {
	d := startRun(t, Config{Ephemeral: true})
	createStream(t, d, "bad")
	ho, err := d.unix.AttachHandler(testContext(t), &listenerdv1.AttachHandlerRequest{ListenerId: "bad", Handover: true})
	if err != nil {
		t.Fatal(err)
	}
	hf, err := ho.Recv()
	if err != nil || hf.GetAttached().GetHandoverPath() == "" {
		t.Fatalf("handover attach: %v, %v", hf, err)
	}
	for _, tc := range []struct {
		name string
		take *listenerdv1.Take
		code codes.Code
		msg  string
	}{
		{"empty", &listenerdv1.Take{}, codes.InvalidArgument, "take.handler_id"},
		{"connection without handler", &listenerdv1.Take{ConnectionId: "l-1.1"}, codes.InvalidArgument, "take.handler_id"},
		{"handler too long", &listenerdv1.Take{HandlerId: strings.Repeat("h", 1000)}, codes.InvalidArgument, "take.handler_id"},
		{"unknown handler", &listenerdv1.Take{HandlerId: "h-00000000"}, codes.NotFound, "h-00000000"},
		{"handover handler", &listenerdv1.Take{HandlerId: hf.GetAttached().GetHandlerId()}, codes.FailedPrecondition, "handover"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := d.unix.ServeConnection(testContext(t))
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Take{Take: tc.take}}); err != nil {
				t.Fatal(err)
			}
			_, err = s.Recv()
			if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.msg) {
				t.Fatalf("got %v, want %v naming %q", err, tc.code, tc.msg)
			}
		})
	}
}
