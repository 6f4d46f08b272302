package service

import (
	"io"
	"net"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// A stream taken with reuse serves one connection after another: after
// closed, the handler's next take parks it again. What the handler sent
// for the first connection after it closed (here after its peer reset it)
// is dropped, never written to the next.
func TestReusedStreamServesConnectionsInTurn(t *testing.T) {
	c := tcpClient(t)
	lid, addr := createStreamListener(t, c, "reuse", 0)
	h := attachRaw(t, c, ctx(t), lid)
	s, err := c.ServeConnection(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	take := &listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Take{
		Take: &listenerdv1.Take{HandlerId: h.id, Reuse: true}}}
	send := func(m *listenerdv1.ServeConnectionRequest) {
		t.Helper()
		if err := s.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	data := func(b string) *listenerdv1.ServeConnectionRequest {
		return &listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Data{Data: []byte(b)}}
	}
	end := &listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_End{End: &listenerdv1.End{}}}
	// opened waits for the next opened, for the peer on port.
	opened := func(peer *net.TCPConn) string {
		t.Helper()
		port := uint32(peer.LocalAddr().(*net.TCPAddr).Port)
		m, err := s.Recv()
		if err != nil || m.GetOpened().GetTuple().GetRemotePort() != port {
			t.Fatalf("got %v, %v; want opened for port %d", m, err, port)
		}
		return m.GetOpened().GetConnectionId()
	}
	// closed reads to the connection's closed, past its data and end.
	closed := func() *listenerdv1.ConnectionClosed {
		t.Helper()
		for {
			m, err := s.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if m.GetClosed() != nil {
				return m.GetClosed()
			}
		}
	}

	send(take)
	if _, err := s.Header(); err != nil {
		t.Fatal(err)
	}
	// The stream parks again before each closed: once the handler has
	// read closed, the next connection comes on it.
	for i, want := range []string{"one", "two", "three"} {
		peer := testkit.Dial(t, addr)
		id := opened(peer)
		send(data(want))
		send(end)
		if got, err := io.ReadAll(peer); err != nil || string(got) != want {
			t.Fatalf("connection %d: peer read %q, %v; want %q", i, got, err, want)
		}
		_ = peer.Close()
		if cl := closed(); cl.GetConnectionId() != id || cl.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_PEER_CLOSED || cl.GetBytesOut() != uint64(len(want)) {
			t.Fatalf("connection %d: closed %v; want %s closed by its peer, %d bytes out", i, cl, id, len(want))
		}
		send(take)
	}

	// A peer that resets; the handler's data and end for it, sent before
	// it looks, are dropped once the next take is read.
	peer := testkit.Dial(t, addr)
	opened(peer)
	_ = peer.SetLinger(0)
	_ = peer.Close()
	if cl := closed(); cl.GetReason() == listenerdv1.CloseReason_CLOSE_REASON_PEER_CLOSED && cl.GetBytesOut() != 0 {
		t.Fatalf("closed %v after the peer reset", cl)
	}
	send(data("stale"))
	send(end)
	send(take)
	next := testkit.Dial(t, addr)
	opened(next)
	send(data("fresh"))
	send(end)
	if got, err := io.ReadAll(next); err != nil || string(got) != "fresh" {
		t.Fatalf("the next connection's peer read %q, %v; want only its own bytes", got, err)
	}
	_ = next.Close()
	closed()

	// Parked again; a connection bound to the stream before the handler's
	// release came is still served on it, and the stream ends after it.
	last := testkit.Dial(t, addr)
	opened(last)
	send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Release{Release: &listenerdv1.Release{}}})
	send(data("last"))
	send(end)
	if got, err := io.ReadAll(last); err != nil || string(got) != "last" {
		t.Fatalf("the connection opened before the release: peer read %q, %v", got, err)
	}
	_ = last.Close()
	closed()
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("after the release: %v, want the stream ended cleanly", err)
	}
	// The listener goes on: with no stream parked, a connection is
	// offered.
	peer = testkit.Dial(t, addr)
	o, err := h.offers.Recv()
	if err != nil || o.GetOffer().GetTuple().GetRemotePort() != uint32(peer.LocalAddr().(*net.TCPAddr).Port) {
		t.Fatalf("offer %v, %v; want the new peer offered", o, err)
	}
}

// A take on a reused stream before its connection closed is refused, and
// resets the connection; a stream taken without reuse ends after closed.
func TestReusedStreamTakeBeforeClosed(t *testing.T) {
	c := tcpClient(t)
	lid, addr := createStreamListener(t, c, "early", 0)
	h := attachRaw(t, c, ctx(t), lid)
	for _, reuse := range []bool{true, false} {
		s, err := c.ServeConnection(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		take := &listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Take{
			Take: &listenerdv1.Take{HandlerId: h.id, Reuse: reuse}}}
		if err := s.Send(take); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Header(); err != nil {
			t.Fatal(err)
		}
		peer := testkit.Dial(t, addr)
		if m, err := s.Recv(); err != nil || m.GetOpened() == nil {
			t.Fatalf("got %v, %v; want opened", m, err)
		}
		if err := s.Send(take); err != nil {
			t.Fatal(err)
		}
		var cl *listenerdv1.ConnectionClosed
		for {
			m, err := s.Recv()
			if err != nil {
				// Without reuse a take is as unexpected as one before
				// closed with it: the connection is reset, and the stream
				// ends with closed, then INVALID_ARGUMENT.
				if cl == nil || status.Code(err) != codes.InvalidArgument {
					t.Fatalf("reuse %v: stream ended with %v after %v; want closed, then INVALID_ARGUMENT", reuse, err, cl)
				}
				break
			}
			if m.GetClosed() != nil {
				cl = m.GetClosed()
			}
		}
		if cl.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_HANDLER_GONE {
			t.Fatalf("reuse %v: closed %v; want HANDLER_GONE", reuse, cl)
		}
		if b, err := io.ReadAll(peer); err == nil && len(b) != 0 {
			t.Fatalf("reuse %v: peer read %q", reuse, b)
		}
	}
}

// A stream that took an offer with reuse is parked after its connection:
// the next connection comes on it, with no offer.
func TestReusedStreamAfterTakenOffer(t *testing.T) {
	c := tcpClient(t)
	lid, addr := createStreamListener(t, c, "offered", 0)
	h := attachRaw(t, c, ctx(t), lid)
	first := testkit.Dial(t, addr)
	o, err := h.offers.Recv()
	if err != nil || o.GetOffer() == nil {
		t.Fatalf("offer: %v, %v", o, err)
	}
	s, err := c.ServeConnection(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	send := func(m *listenerdv1.ServeConnectionRequest) {
		t.Helper()
		if err := s.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	end := &listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_End{End: &listenerdv1.End{}}}
	send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Take{
		Take: &listenerdv1.Take{ConnectionId: o.GetOffer().GetConnectionId(), HandlerId: h.id, Reuse: true}}})
	for i, peer := range []*net.TCPConn{first, nil} {
		if peer == nil {
			peer = testkit.Dial(t, addr) // parked before the first's closed: it comes here
		}
		m, err := s.Recv()
		if err != nil || m.GetOpened().GetTuple().GetRemotePort() != uint32(peer.LocalAddr().(*net.TCPAddr).Port) {
			t.Fatalf("connection %d: %v, %v; want opened for it", i, m, err)
		}
		send(end)
		if b, err := io.ReadAll(peer); err != nil || len(b) != 0 {
			t.Fatalf("connection %d: peer read %q, %v", i, b, err)
		}
		_ = peer.Close()
		for m == nil || m.GetClosed() == nil {
			if m, err = s.Recv(); err != nil {
				t.Fatal(err)
			}
		}
		send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Take{
			Take: &listenerdv1.Take{HandlerId: h.id}}})
	}
}
