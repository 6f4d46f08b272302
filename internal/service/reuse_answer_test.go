package service

import (
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// onReparked sets the hook for the test: each reused stream parked again
// on the handler's answer after closed sends on the channel returned.
func onReparked(t *testing.T) <-chan struct{} {
	t.Helper()
	ch := make(chan struct{}, 1024)
	hook := func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	testHookReparked.Store(&hook)
	t.Cleanup(func() { testHookReparked.Store(nil) })
	return ch
}

// waitReparked waits until a stream was parked again on an answer after
// closed (a generous guard: it is a matter of the daemon reading it).
func waitReparked(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatal("the stream was not parked again after the take")
	}
}

// doneEnd is an end with done: the handler is done with the connection.
var doneEnd = &listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_End{End: &listenerdv1.End{Done: true}}}

// With end marks, a plain end (a half-close) is no answer to closed: the
// stream is not parked at closed, a connection that comes before the
// handler's take is offered, and the take parks the stream, the next
// connection coming on it. Data between the end and the take is refused,
// naming the field.
func TestReusedStreamPlainEndParksOnTake(t *testing.T) {
	reparked := onReparked(t)
	c := tcpClient(t)
	lid, addr := createStreamListener(t, c, "plainend", 0)
	h := attachRaw(t, c, ctx(t), lid)
	s, _ := endMarksStream(t, c, h.id, true)
	r := rawStream{t, s}
	peer := testkit.Dial(t, addr)
	r.opened(peer)
	r.data("one")
	r.end() // a half-close: the peer may still send
	if _, err := peer.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(peer); err != nil || string(got) != "one" {
		t.Fatalf("peer read %q, %v", got, err)
	}
	_ = peer.Close()
	if cl := r.closed(); cl.GetBytesIn() != uint64(len("late")) {
		t.Fatalf("closed %v; want the peer's bytes in after the handler's end", cl)
	}
	// Not answered: not parked.
	between := testkit.Dial(t, addr)
	if o, err := h.offers.Recv(); err != nil || o.GetOffer().GetTuple().GetRemotePort() != uint32(between.LocalAddr().(*net.TCPAddr).Port) {
		t.Fatalf("offer %v, %v; want the connection before the take offered", o, err)
	}
	r.take(h.id)
	waitReparked(t, reparked)
	next := testkit.Dial(t, addr)
	r.opened(next)
	r.data("two")
	r.done()
	if got, err := io.ReadAll(next); err != nil || string(got) != "two" {
		t.Fatalf("the next connection's peer read %q, %v", got, err)
	}
	_ = next.Close()
	r.closed()

	// Data after a plain end, before the take: refused.
	last := testkit.Dial(t, addr)
	r.opened(last)
	r.end()
	r.data("after the end")
	var err error
	for err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.InvalidArgument || badField(err) != "data" {
		t.Fatalf("data after a plain end: %v (field %q); want INVALID_ARGUMENT naming data", err, badField(err))
	}
}

// With end marks, an end with done answers the connection's closed before
// it comes: the stream is parked again as the connection closes, before
// closed is sent, with no take; one that closed before the handler's
// answer is parked on the end with done that follows.
func TestReusedStreamDoneParksAtClosed(t *testing.T) {
	reparked := onReparked(t)
	c := tcpClient(t)
	lid, addr := createStreamListener(t, c, "done", 0)
	h := attachRaw(t, c, ctx(t), lid)
	s, _ := endMarksStream(t, c, h.id, true)
	r := rawStream{t, s}
	peer := testkit.Dial(t, addr)
	r.opened(peer)
	r.data("one")
	r.done()
	if got, err := io.ReadAll(peer); err != nil || string(got) != "one" {
		t.Fatalf("peer read %q, %v", got, err)
	}
	_ = peer.Close()
	r.closed()
	select {
	case <-reparked:
		t.Fatal("parked after closed; want before it")
	default:
	}
	next := testkit.Dial(t, addr) // parked already: it comes on the stream
	r.opened(next)
	_ = next.SetLinger(0)
	_ = next.Close() // closes before the handler's answer
	r.closed()
	r.done() // the answer: the stream parks on it
	waitReparked(t, reparked)
	last := testkit.Dial(t, addr)
	r.opened(last)
	r.data("last")
	r.done()
	if got, err := io.ReadAll(last); err != nil || string(got) != "last" {
		t.Fatalf("the last peer read %q, %v", got, err)
	}
}

// A reused stream waiting for the handler's answer to closed ends when its
// listener closes, as a parked one does: it does not wait for an answer
// that a stuck handler may never send.
func TestReusedStreamUnansweredEndsWithItsListener(t *testing.T) {
	c := tcpClient(t)
	lid, addr := createStreamListener(t, c, "unanswered", 0)
	h := attachRaw(t, c, ctx(t), lid)
	s, _ := endMarksStream(t, c, h.id, true)
	r := rawStream{t, s}
	peer := testkit.Dial(t, addr)
	r.opened(peer)
	r.end() // a plain end: no answer yet
	if got, err := io.ReadAll(peer); err != nil || len(got) != 0 {
		t.Fatalf("peer read %q, %v", got, err)
	}
	_ = peer.Close()
	r.closed()
	if _, err := c.CloseListener(ctx(t), &listenerdv1.CloseListenerRequest{Id: lid, Force: true}); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() {
		for {
			if _, err := s.Recv(); err != nil {
				ended <- err
				return
			}
		}
	}()
	select {
	case err := <-ended:
		if err != io.EOF && status.Code(err) == codes.Unknown {
			t.Fatalf("the stream ended with %v", err)
		}
	case <-time.After(20 * time.Second):
		// A generous guard: the stream ends at once. Without the wake on
		// the attachment's end it lingered until the force close gave up
		// on it, 30 s later.
		t.Fatal("a stream waiting for the handler's answer outlived its listener")
	}
}
