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
	reparked := onReparked(t)
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
	// The stream parks again on each take after closed: the next
	// connection comes on it.
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
		waitReparked(t, reparked)
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
	waitReparked(t, reparked)
	next := testkit.Dial(t, addr)
	opened(next)
	send(data("fresh"))
	send(end)
	if got, err := io.ReadAll(next); err != nil || string(got) != "fresh" {
		t.Fatalf("the next connection's peer read %q, %v; want only its own bytes", got, err)
	}
	_ = next.Close()
	closed()
	send(take)
	waitReparked(t, reparked)

	// Parked again; a release answers the last connection's closed: the
	// stream ends after it.
	last := testkit.Dial(t, addr)
	opened(last)
	send(data("last"))
	send(end)
	if got, err := io.ReadAll(last); err != nil || string(got) != "last" {
		t.Fatalf("the last connection: peer read %q, %v", got, err)
	}
	_ = last.Close()
	closed()
	send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Release{Release: &listenerdv1.Release{}}})
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
	reparked := onReparked(t)
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
			peer = testkit.Dial(t, addr) // parked on the take after the first's closed: it comes here
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
		if i == 0 {
			waitReparked(t, reparked)
		}
	}
}

// endMarksStream opens a stream taken with reuse, and with end marks if
// asked, and waits until it is parked: it returns the stream and whether
// the headers said end marks.
func endMarksStream(t *testing.T, c listenerdv1.ListenerServiceClient, handler string, endMarks bool) (listenerdv1.ListenerService_ServeConnectionClient, bool) {
	t.Helper()
	s, err := c.ServeConnection(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Take{
		Take: &listenerdv1.Take{HandlerId: handler, Reuse: true, EndMarks: endMarks}}}); err != nil {
		t.Fatal(err)
	}
	md, err := s.Header()
	if err != nil {
		t.Fatal(err)
	}
	v := md.Get("listenerd-end-marks")
	if len(v) > 0 && v[0] != "2" {
		t.Fatalf("the headers say end marks %q; want 2 (end with done is the mark, plain end is not)", v)
	}
	return s, len(v) > 0
}

// rawStream drives one ServeConnection stream from a test.
type rawStream struct {
	t *testing.T
	s listenerdv1.ListenerService_ServeConnectionClient
}

func (r rawStream) send(m *listenerdv1.ServeConnectionRequest) {
	r.t.Helper()
	if err := r.s.Send(m); err != nil {
		r.t.Fatal(err)
	}
}

func (r rawStream) data(b string) {
	r.t.Helper()
	r.send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Data{Data: []byte(b)}})
}

func (r rawStream) end() {
	r.t.Helper()
	r.send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_End{End: &listenerdv1.End{}}})
}

func (r rawStream) done() {
	r.t.Helper()
	r.send(doneEnd)
}

func (r rawStream) take(handler string) {
	r.t.Helper()
	r.send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Take{
		Take: &listenerdv1.Take{HandlerId: handler}}})
}

// opened waits for the next message, which must open the peer's
// connection.
func (r rawStream) opened(peer *net.TCPConn) {
	r.t.Helper()
	port := uint32(peer.LocalAddr().(*net.TCPAddr).Port)
	if m, err := r.s.Recv(); err != nil || m.GetOpened().GetTuple().GetRemotePort() != port {
		r.t.Fatalf("got %v, %v; want opened for port %d", m, err, port)
	}
}

// closed reads to the next closed, past data and end.
func (r rawStream) closed() *listenerdv1.ConnectionClosed {
	r.t.Helper()
	for {
		m, err := r.s.Recv()
		if err != nil {
			r.t.Fatal(err)
		}
		if m.GetClosed() != nil {
			return m.GetClosed()
		}
	}
}

// With end marks, the handler's end with done, or its reset, ends its
// messages for a connection and answers its closed: with no take after
// closed, the stream is parked again at closed, and what the handler
// sends next is for the next connection opened on it. A release is then
// no mark: the stream ends, and the listener offers the next connection.
func TestReusedStreamEndMarks(t *testing.T) {
	c := tcpClient(t)
	lid, addr := createStreamListener(t, c, "endmarks", 0)
	h := attachRaw(t, c, ctx(t), lid)
	s, said := endMarksStream(t, c, h.id, true)
	if !said {
		t.Fatal("the headers do not say end marks")
	}
	r := rawStream{t, s}
	for i, want := range []string{"one", "two", "three"} {
		peer := testkit.Dial(t, addr)
		r.opened(peer)
		r.data(want)
		r.done() // the mark: no take follows
		if got, err := io.ReadAll(peer); err != nil || string(got) != want {
			t.Fatalf("connection %d: peer read %q, %v; want %q", i, got, err, want)
		}
		_ = peer.Close()
		if cl := r.closed(); cl.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_PEER_CLOSED || cl.GetBytesOut() != uint64(len(want)) {
			t.Fatalf("connection %d: closed %v", i, cl)
		}
	}
	// A reset is a mark too.
	peer := testkit.Dial(t, addr)
	r.opened(peer)
	r.send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Reset_{Reset_: &listenerdv1.Reset{}}})
	if cl := r.closed(); cl.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_HANDLER_RESET {
		t.Fatalf("closed %v; want HANDLER_RESET", cl)
	}
	next := testkit.Dial(t, addr)
	r.opened(next)
	r.data("after the reset")
	r.done()
	if got, err := io.ReadAll(next); err != nil || string(got) != "after the reset" {
		t.Fatalf("the connection after the reset: peer read %q, %v", got, err)
	}
	_ = next.Close()
	r.closed()
	r.send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Release{Release: &listenerdv1.Release{}}})
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("after the release: %v, want the stream ended cleanly", err)
	}
	peer = testkit.Dial(t, addr)
	o, err := h.offers.Recv()
	if err != nil || o.GetOffer().GetTuple().GetRemotePort() != uint32(peer.LocalAddr().(*net.TCPAddr).Port) {
		t.Fatalf("offer %v, %v; want the new peer offered", o, err)
	}
}

// With end marks, a connection that closed before the handler ended it
// still needs its mark: a take answers its closed, and the stream is
// parked again on it; the next connection gets only its own bytes.
func TestReusedStreamEndMarksTakeAfterUnendedClose(t *testing.T) {
	reparked := onReparked(t)
	c := tcpClient(t)
	lid, addr := createStreamListener(t, c, "unended", 0)
	h := attachRaw(t, c, ctx(t), lid)
	s, _ := endMarksStream(t, c, h.id, true)
	r := rawStream{t, s}
	peer := testkit.Dial(t, addr)
	r.opened(peer)
	_ = peer.SetLinger(0)
	_ = peer.Close() // the peer resets: closed comes before the handler's end
	r.closed()
	r.take(h.id) // the mark
	waitReparked(t, reparked)
	next := testkit.Dial(t, addr)
	r.opened(next)
	r.data("fresh")
	r.end()
	if got, err := io.ReadAll(next); err != nil || string(got) != "fresh" {
		t.Fatalf("the next connection's peer read %q, %v; want only its own bytes", got, err)
	}
	_ = next.Close()
	if cl := r.closed(); cl.GetBytesOut() != uint64(len("fresh")) {
		t.Fatalf("closed %v; want %d bytes out", cl, len("fresh"))
	}
}

// With end marks, a take after a connection the handler ended with done
// is the mark of a next connection: with none closed, it is refused.
func TestReusedStreamEndMarksTakeAfterEnd(t *testing.T) {
	c := tcpClient(t)
	lid, addr := createStreamListener(t, c, "twice", 0)
	h := attachRaw(t, c, ctx(t), lid)
	s, _ := endMarksStream(t, c, h.id, true)
	r := rawStream{t, s}
	peer := testkit.Dial(t, addr)
	r.opened(peer)
	r.done()
	if got, err := io.ReadAll(peer); err != nil || len(got) != 0 {
		t.Fatalf("peer read %q, %v", got, err)
	}
	_ = peer.Close()
	r.closed()
	r.take(h.id)
	if _, err := s.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("after a take with no connection closed: %v; want INVALID_ARGUMENT", err)
	}
}

// Without end marks (a handler from before them), the headers say
// nothing, and an end is no mark: the take after closed is.
func TestReusedStreamWithoutEndMarks(t *testing.T) {
	reparked := onReparked(t)
	c := tcpClient(t)
	lid, addr := createStreamListener(t, c, "old", 0)
	h := attachRaw(t, c, ctx(t), lid)
	s, said := endMarksStream(t, c, h.id, false)
	if said {
		t.Fatal("the headers say end marks; the take did not ask")
	}
	r := rawStream{t, s}
	for i, want := range []string{"one", "two"} {
		peer := testkit.Dial(t, addr)
		r.opened(peer)
		r.data(want)
		r.end()
		if got, err := io.ReadAll(peer); err != nil || string(got) != want {
			t.Fatalf("connection %d: peer read %q, %v; want %q", i, got, err, want)
		}
		_ = peer.Close()
		r.closed()
		r.take(h.id) // the mark, after the end
		waitReparked(t, reparked)
	}
}
