package service

import (
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/testkit"
)

// windowClient is tcpClient with the client's flow-control windows fixed
// at 64 KiB (no growth): a handler that does not read its stream stops
// the daemon's sends after 64 KiB.
func windowClient(t *testing.T) (listenerdv1.ListenerServiceClient, *listener.Manager) {
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
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(1<<16), grpc.WithInitialConnWindowSize(1<<16))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		<-served
		mgr.Shutdown(0)
		mgr.Bus().Close()
	})
	return listenerdv1.NewListenerServiceClient(conn), mgr
}

// A write of the handler's bytes that fails because the peer reset the
// socket closes the connection (RESET). The failed write takes the
// socket's error, and the peer's reset then reads as an end (EOF): a
// connection left open after it would wait for the handler's end, and
// one dropped as the failed connection's leftovers would keep it open
// for good.
func TestHandlerWriteToAResetPeerClosesTheConnection(t *testing.T) {
	c, _ := windowClient(t)
	for _, reuse := range []bool{false, true} {
		lid, addr := createStreamListener(t, c, "", 0)
		h := attachRaw(t, c, ctx(t), lid)
		s, err := c.ServeConnection(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Take{
			Take: &listenerdv1.Take{HandlerId: h.id, Reuse: reuse}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Header(); err != nil {
			t.Fatal(err)
		}
		peer := testkit.Dial(t, addr)
		if m, err := s.Recv(); err != nil || m.GetOpened() == nil {
			t.Fatalf("reuse %v: %v, %v; want opened", reuse, m, err)
		}
		// The peer sends more than the stream's window: the daemon, its
		// sends blocked (the handler reads nothing yet), stops reading
		// the socket.
		go func() { _, _ = peer.Write(make([]byte, 8<<20)) }()
		testkit.Eventually(t, func() bool {
			r, err := c.ListConnections(ctx(t), &listenerdv1.ListConnectionsRequest{ListenerId: lid})
			return err == nil && len(r.GetConnections()) == 1 && r.GetConnections()[0].GetBytesIn() > 1<<16
		}, "the daemon reading past the stream's window")
		_ = peer.SetLinger(0)
		_ = peer.Close() // RST
		for range 3 {
			if err := s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Data{Data: []byte("late")}}); err != nil {
				t.Fatal(err)
			}
		}
		var cl *listenerdv1.ConnectionClosed
		for sentEnd := false; cl == nil; {
			m, err := s.Recv()
			if err != nil {
				t.Fatalf("reuse %v: %v before closed", reuse, err)
			}
			if m.GetEnd() != nil && !sentEnd {
				sentEnd = true
				if err := s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_End{End: &listenerdv1.End{}}}); err != nil {
					t.Fatal(err)
				}
			}
			cl = m.GetClosed()
		}
		t.Logf("reuse %v: closed %v", reuse, cl)
		if cl.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_RESET {
			t.Errorf("reuse %v: closed %v (%s); want RESET", reuse, cl.GetReason(), cl.GetError())
		}
	}
}
