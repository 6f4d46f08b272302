package listenerd

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// takeCounter counts the takes sent on ServeConnection streams.
type takeCounter struct {
	grpc.ClientStream
	n *atomic.Int64
}

func (s takeCounter) SendMsg(m any) error {
	if r, ok := m.(*listenerdv1.ServeConnectionRequest); ok && r.GetTake() != nil {
		s.n.Add(1)
	}
	return s.ClientStream.SendMsg(m)
}

// With a daemon that takes end or reset as the mark, a reused stream's
// connection that this process ended needs no take after its closed: the
// only takes are the streams' first.
func TestEndMarksLeaveOutTheTake(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var takes atomic.Int64
	count := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		s, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil || method != listenerdv1.ListenerService_ServeConnection_FullMethodName {
			return s, err
		}
		return takeCounter{s, &takes}, nil
	}
	c, err := Dial(Options{NoHandover: true, DialOptions: []grpc.DialOption{grpc.WithStreamInterceptor(count)}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l, err := c.Listen(ctx, "127.0.0.1:0", WithReadyStreams(2))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for range 5 {
		testkit.Eventually(t, func() bool { return l.parked.Load() >= 2 }, "two streams parked")
		echoThrough(t, l, 2) // each echo ends its side before the peer's close
	}
	testkit.Eventually(t, func() bool { return l.parked.Load() >= 2 }, "two streams parked")
	if n, opens := takes.Load(), l.opens.Load(); n != opens || l.offered.Load() != 0 {
		t.Fatalf("%d takes for %d streams opened (%d offers), 10 connections; want a take only as each stream opened", n, opens, l.offered.Load())
	}
}
