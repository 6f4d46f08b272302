package server

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// handler is a raw stream handler over the real API, as any gRPC language
// would write one.
type handler struct {
	t      *testing.T
	c      listenerdv1.ListenerServiceClient
	id     string
	offers listenerdv1.ListenerService_AttachHandlerClient
}

func attach(t *testing.T, c listenerdv1.ListenerServiceClient, ref string, max uint32) *handler {
	t.Helper()
	ctx, cancel := context.WithCancel(testContext(t))
	t.Cleanup(cancel)
	return attachOn(t, ctx, c, ref, max)
}

// take takes the next offer and returns its stream, past the opened
// message.
func (h *handler) take() listenerdv1.ListenerService_ServeConnectionClient {
	h.t.Helper()
	o, err := h.offers.Recv()
	if err != nil || o.GetOffer() == nil {
		h.t.Fatalf("offer: %v, %v", o, err)
	}
	s, err := h.c.ServeConnection(testContext(h.t))
	if err != nil {
		h.t.Fatal(err)
	}
	if err := s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Take{
		Take: &listenerdv1.Take{ConnectionId: o.GetOffer().GetConnectionId(), HandlerId: h.id}}}); err != nil {
		h.t.Fatal(err)
	}
	m, err := s.Recv()
	if err != nil || m.GetOpened().GetConnectionId() != o.GetOffer().GetConnectionId() {
		h.t.Fatalf("opened: %v, %v", m, err)
	}
	return s
}

// recvUntilEnd reads data messages until end, returning the bytes.
func recvUntilEnd(t *testing.T, s listenerdv1.ListenerService_ServeConnectionClient) []byte {
	t.Helper()
	var got []byte
	for {
		m, err := s.Recv()
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		switch {
		case m.GetEnd() != nil:
			return got
		case m.GetData() != nil:
			got = append(got, m.GetData()...)
		default:
			t.Fatalf("unexpected %v before end", m)
		}
	}
}

func createStream(t *testing.T, d *testDaemon, name string) string {
	t.Helper()
	r, err := d.unix.CreateListener(testContext(t), &listenerdv1.CreateListenerRequest{Name: name, Spec: &listenerdv1.ListenerSpec{
		Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Stream{Stream: &listenerdv1.StreamHandler{}}}}})
	if err != nil {
		t.Fatal(err)
	}
	return r.GetListener().GetStatus().GetBoundAddress()
}

// Half-close both ways through a stream handler: the peer's FIN reaches
// the handler while it can still write, and the handler's end reaches the
// peer while the peer's side is open; then the closed message ends it.
func TestStreamHalfCloseBothWays(t *testing.T) {
	d := startRun(t, Config{Ephemeral: true})
	addr := createStream(t, d, "s")
	h := attach(t, d.unix, "s", 4)

	// The peer ends first.
	c := testkit.Dial(t, addr)
	s := h.take()
	if _, err := c.Write([]byte("question")); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	if got := recvUntilEnd(t, s); string(got) != "question" {
		t.Fatalf("handler got %q", got)
	}
	for _, m := range []*listenerdv1.ServeConnectionRequest{
		{Kind: &listenerdv1.ServeConnectionRequest_Data{Data: []byte("answer after your FIN")}},
		{Kind: &listenerdv1.ServeConnectionRequest_End{End: &listenerdv1.End{}}},
	} {
		if err := s.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := io.ReadAll(c); err != nil || string(got) != "answer after your FIN" {
		t.Fatalf("peer read %q, %v", got, err)
	}
	m, err := s.Recv()
	if err != nil || m.GetClosed().GetReason() != listenerdv1.CloseReason_CLOSE_REASON_PEER_CLOSED ||
		m.GetClosed().GetBytesIn() != 8 || m.GetClosed().GetBytesOut() != 21 {
		t.Fatalf("closed: %v, %v", m, err)
	}

	// The handler ends first: the peer reads the end and can still write.
	c2 := testkit.Dial(t, addr)
	s2 := h.take()
	if err := s2.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_End{End: &listenerdv1.End{}}}); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(c2); err != nil || len(got) != 0 {
		t.Fatalf("peer read %q, %v; want the handler's end", got, err)
	}
	if _, err := c2.Write([]byte("still talking")); err != nil {
		t.Fatal(err)
	}
	_ = c2.CloseWrite()
	if got := recvUntilEnd(t, s2); string(got) != "still talking" {
		t.Fatalf("handler got %q after its end", got)
	}
	if m, err := s2.Recv(); err != nil || m.GetClosed() == nil {
		t.Fatalf("closed: %v, %v", m, err)
	}
}

// A reset from the handler is an RST at the peer; the peer's RST closes
// the handler's stream with RESET. A handler whose stream breaks resets
// only its own connection.
func TestStreamResetsAndHandlerGone(t *testing.T) {
	d := startRun(t, Config{Ephemeral: true})
	addr := createStream(t, d, "r")
	h := attach(t, d.unix, "r", 4)

	c := testkit.Dial(t, addr)
	s := h.take()
	if err := s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Reset_{Reset_: &listenerdv1.Reset{}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); !isReset(err) {
		t.Fatalf("peer read %v, want a reset", err)
	}
	if m, err := s.Recv(); err != nil || m.GetClosed().GetReason() != listenerdv1.CloseReason_CLOSE_REASON_HANDLER_RESET {
		t.Fatalf("closed: %v, %v", m, err)
	}

	c2 := testkit.Dial(t, addr)
	s2 := h.take()
	_ = c2.SetLinger(0)
	c2.Close()
	for {
		m, err := s2.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if m.GetClosed() != nil {
			if m.GetClosed().GetReason() != listenerdv1.CloseReason_CLOSE_REASON_RESET {
				t.Fatalf("closed %v, want RESET", m)
			}
			break
		}
	}

	// Two connections on one handler; the stream of one breaks (its
	// handler dies): only that socket is reset, the other keeps flowing.
	socks := map[uint32]*net.TCPConn{}
	for range 2 {
		c := testkit.Dial(t, addr)
		socks[uint32(c.LocalAddr().(*net.TCPAddr).Port)] = c
	}
	ctx, cancel := context.WithCancel(testContext(t))
	o, err := h.offers.Recv()
	if err != nil {
		t.Fatal(err)
	}
	dead := socks[o.GetOffer().GetTuple().GetRemotePort()]
	broken, err := d.unix.ServeConnection(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = broken.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Take{
		Take: &listenerdv1.Take{ConnectionId: o.GetOffer().GetConnectionId(), HandlerId: h.id}}})
	if m, err := broken.Recv(); err != nil || m.GetOpened() == nil {
		t.Fatalf("opened: %v, %v", m, err)
	}
	alive := h.take()
	cancel()
	if _, err := dead.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the dead handler's socket read %v, want a reset", err)
	}
	for _, c := range socks {
		if c == dead {
			continue
		}
		if _, err := c.Write([]byte("alive")); err != nil {
			t.Fatal(err)
		}
	}
	var got []byte
	for len(got) < 5 {
		m, err := alive.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m.GetData()...)
	}
	if string(got) != "alive" {
		t.Fatalf("the other socket carried %q", got)
	}
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// Attaching to a listener whose handler is not stream is refused.
func TestAttachNeedsAStreamListener(t *testing.T) {
	d := startRun(t, Config{Ephemeral: true})
	if _, err := d.unix.CreateListener(testContext(t), &listenerdv1.CreateListenerRequest{Name: "plain", Spec: &listenerdv1.ListenerSpec{}}); err != nil {
		t.Fatal(err)
	}
	st, err := d.unix.AttachHandler(testContext(t), &listenerdv1.AttachHandlerRequest{ListenerId: "plain"})
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("attach to discard: %v, want FAILED_PRECONDITION", err)
	}
}
