package service

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/testkit"
)

// The window these tests aim at: a ready stream has claimed the
// connection bound to it, and its opened message is not sent yet. A
// stream that breaks there has given the handler nothing: the connection
// must go to a handler again (README, streams opened ahead), not be reset
// as HANDLER_GONE. No client can aim at that window; testHookReadyClaimed
// holds the stream there while the test breaks it.

// tcpClient serves a Service on 127.0.0.1 over TCP and returns a real
// gRPC client.
func tcpClient(t *testing.T) listenerdv1.ListenerServiceClient {
	t.Helper()
	mgr := listener.NewManager(events.NewBus(events.Options{}), nil, listener.Options{})
	srv := grpc.NewServer(ServerOption())
	listenerdv1.RegisterListenerServiceServer(srv, New(mgr, nil))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(lis) }()
	conn := testkit.DialGRPC(t, lis.Addr().String(), insecure.NewCredentials())
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		<-served
		mgr.Shutdown(0)
		mgr.Bus().Close()
	})
	return listenerdv1.NewListenerServiceClient(conn)
}

// onClaimed sets the hook for the test: fn runs once, for the first ready
// stream that claims a connection.
func onClaimed(t *testing.T, fn func(stream context.Context)) {
	var once sync.Once
	hook := func(c context.Context) { once.Do(func() { fn(c) }) }
	testHookReadyClaimed.Store(&hook)
	t.Cleanup(func() { testHookReadyClaimed.Store(nil) })
}

type rawHandler struct {
	id     string
	offers listenerdv1.ListenerService_AttachHandlerClient
}

func attachRaw(t *testing.T, c listenerdv1.ListenerServiceClient, ctx context.Context, ref string) rawHandler {
	t.Helper()
	st, err := c.AttachHandler(ctx, &listenerdv1.AttachHandlerRequest{ListenerId: ref, MaxConnections: 4})
	if err != nil {
		t.Fatal(err)
	}
	first, err := st.Recv()
	if err != nil || first.GetAttached() == nil {
		t.Fatalf("attach: %v, %v", first, err)
	}
	return rawHandler{id: first.GetAttached().GetHandlerId(), offers: st}
}

// readyStream parks a stream ahead for handler and waits until it is
// parked (the headers).
func readyStream(t *testing.T, c listenerdv1.ListenerServiceClient, ctx context.Context, handler string) listenerdv1.ListenerService_ServeConnectionClient {
	t.Helper()
	s, err := c.ServeConnection(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Take{
		Take: &listenerdv1.Take{HandlerId: handler}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Header(); err != nil {
		t.Fatal(err)
	}
	return s
}

// connEvents follows the listener's events until the connection on the
// peer's port closes: the handlers that took it, in order, and its close.
func connEvents(t *testing.T, c listenerdv1.ListenerServiceClient, lid string, port uint32) (taken []string, closed *listenerdv1.ConnectionClosed) {
	t.Helper()
	zero := uint64(0)
	w, err := c.WatchEvents(ctx(t), &listenerdv1.WatchEventsRequest{ListenerIds: []string{lid}, AfterSequence: &zero})
	if err != nil {
		t.Fatal(err)
	}
	id := ""
	for {
		r, err := w.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range r.GetEvents() {
			switch {
			case ev.GetConnectionOpened().GetTuple().GetRemotePort() == port:
				id = ev.GetConnectionOpened().GetConnectionId()
			case id != "" && ev.GetConnectionTaken().GetConnectionId() == id:
				taken = append(taken, ev.GetConnectionTaken().GetHandlerId())
			case id != "" && ev.GetConnectionClosed().GetConnectionId() == id:
				return taken, ev.GetConnectionClosed()
			}
		}
	}
}

func createStreamListener(t *testing.T, c listenerdv1.ListenerServiceClient, name string, claim time.Duration) (id, addr string) {
	t.Helper()
	l := createOK(t, c, name, &listenerdv1.ListenerSpec{Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Stream{
		Stream: &listenerdv1.StreamHandler{ClaimTimeout: durationpb.New(claim)}}}})
	return l.GetId(), l.GetStatus().GetBoundAddress()
}

// A ready stream that breaks after claiming its connection and before
// sending opened gives the connection back: its handler, still attached,
// or the other one is offered it again and serves it, and connection_taken
// names only the handler that did.
func TestReadyStreamBrokenBeforeOpenedRequeues(t *testing.T) {
	c := tcpClient(t)
	lid, addr := createStreamListener(t, c, "requeue", 0)
	a := attachRaw(t, c, ctx(t), lid)
	b := attachRaw(t, c, ctx(t), lid)
	rctx, cancelReady := context.WithCancel(ctx(t))
	defer cancelReady()
	onClaimed(t, func(stream context.Context) {
		cancelReady()
		<-stream.Done() // the daemon has seen the stream break
	})
	readyStream(t, c, rctx, a.id)

	peer := testkit.Dial(t, addr)
	port := uint32(peer.LocalAddr().(*net.TCPAddr).Port)
	served := make(chan string, 2)
	tctx := ctx(t) // ends the attach streams, and the unserved handler's wait
	for _, h := range []rawHandler{a, b} {
		go func() {
			if err := serveOffer(c, h, port, peer); err == nil {
				served <- h.id
			} else if tctx.Err() == nil {
				served <- "error: " + err.Error()
			}
		}()
	}
	taken, closed := connEvents(t, c, lid, port)
	if closed.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_PEER_CLOSED {
		t.Fatalf("closed %v (taken by %v); want it served again", closed, taken)
	}
	by := <-served
	if len(taken) != 1 || taken[0] != by {
		t.Fatalf("connection_taken by %v; want once, by %s, which served it", taken, by)
	}
}

// A handler that detaches while its ready stream is between claim and
// opened: the connection goes to the other handler's ready stream.
func TestReadyHandlerGoneBeforeOpenedRequeues(t *testing.T) {
	c := tcpClient(t)
	lid, addr := createStreamListener(t, c, "gone", 0)
	actx, cancelA := context.WithCancel(ctx(t))
	defer cancelA()
	a := attachRaw(t, c, actx, lid) // the oldest: ties go to it
	b := attachRaw(t, c, ctx(t), lid)
	onClaimed(t, func(stream context.Context) {
		cancelA() // the attach stream and the ready stream
		<-stream.Done()
	})
	readyStream(t, c, actx, a.id)
	bs := readyStream(t, c, ctx(t), b.id)

	peer := testkit.Dial(t, addr)
	port := uint32(peer.LocalAddr().(*net.TCPAddr).Port)
	m, err := bs.Recv()
	if err != nil || m.GetOpened().GetTuple().GetRemotePort() != port {
		t.Fatalf("b's ready stream: %v, %v; want opened for port %d", m, err, port)
	}
	if _, err := peer.Write([]byte("to b")); err != nil {
		t.Fatal(err)
	}
	_ = peer.CloseWrite()
	if m, err := bs.Recv(); err != nil || string(m.GetData()) != "to b" {
		t.Fatalf("b got %v, %v", m, err)
	}
	if err := bs.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_End{End: &listenerdv1.End{}}}); err != nil {
		t.Fatal(err)
	}
	taken, closed := connEvents(t, c, lid, port)
	if closed.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_PEER_CLOSED || len(taken) != 1 || taken[0] != b.id {
		t.Fatalf("closed %v, taken by %v; want served once, by %s (a is %s)", closed, taken, b.id, a.id)
	}
}

// With no other handler, the connection given back waits and ends as its
// claim timeout says: CLAIM_TIMEOUT (a handler was attached), never
// taken.
func TestReadyStreamBrokenBeforeOpenedNoOtherHandler(t *testing.T) {
	c := tcpClient(t)
	lid, addr := createStreamListener(t, c, "alone", 50*time.Millisecond)
	a := attachRaw(t, c, ctx(t), lid)
	actx, cancelA := context.WithCancel(ctx(t))
	defer cancelA()
	onClaimed(t, func(stream context.Context) {
		cancelA()
		<-stream.Done()
	})
	readyStream(t, c, actx, a.id)
	peer := testkit.Dial(t, addr)
	port := uint32(peer.LocalAddr().(*net.TCPAddr).Port)
	taken, closed := connEvents(t, c, lid, port)
	if closed.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_CLAIM_TIMEOUT || len(taken) != 0 {
		t.Fatalf("closed %v, taken by %v; want CLAIM_TIMEOUT, never taken", closed, taken)
	}
	if b, err := io.ReadAll(peer); err != nil || len(b) != 0 {
		t.Fatalf("peer read %q, %v; want a clean close", b, err)
	}
}

// serveOffer takes h's next offer, which must be for the peer on port,
// and echoes one message through it.
func serveOffer(c listenerdv1.ListenerServiceClient, h rawHandler, port uint32, peer *net.TCPConn) error {
	o, err := h.offers.Recv()
	if err != nil {
		return err
	}
	if o.GetOffer().GetTuple().GetRemotePort() != port {
		return fmt.Errorf("offer %v, want the peer on port %d", o, port)
	}
	cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := c.ServeConnection(cctx)
	if err != nil {
		return err
	}
	if err := s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Take{
		Take: &listenerdv1.Take{ConnectionId: o.GetOffer().GetConnectionId(), HandlerId: h.id}}}); err != nil {
		return err
	}
	if m, err := s.Recv(); err != nil || m.GetOpened() == nil {
		return fmt.Errorf("opened: %v, %v", m, err)
	}
	if _, err := peer.Write([]byte("back")); err != nil {
		return err
	}
	_ = peer.CloseWrite()
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
	if back, err := io.ReadAll(peer); err != nil || string(back) != "back" {
		return fmt.Errorf("peer read %q, %v", back, err)
	}
	if m, err := s.Recv(); err != nil || m.GetClosed() == nil {
		return fmt.Errorf("closed: %v, %v", m, err)
	}
	return nil
}
