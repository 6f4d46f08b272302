package listenerd_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/listenerd/listenerd/api/listenerd"
	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// dialClient dials the daemon for the stream tests: bytes through the API,
// not handover (handover_test.go has those).
func dialClient(t *testing.T) *listenerd.Client {
	t.Helper()
	c, err := listenerd.Dial(listenerd.Options{NoHandover: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func listen(t *testing.T, c *listenerd.Client, opts ...listenerd.ListenOption) *listenerd.Listener {
	t.Helper()
	l, err := c.Listen(context.Background(), "127.0.0.1:0", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func accept(t *testing.T, l *listenerd.Listener) *listenerd.Conn {
	t.Helper()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(testkit.Guard))
	return c.(*listenerd.Conn)
}

// The peer's FIN reaches the handler while it can still write; the
// handler's FIN reaches the peer while the peer can still write.
func TestHalfCloseBothWays(t *testing.T) {
	l := listen(t, dialClient(t))
	peer := testkit.Dial(t, l.Addr().String())
	c := accept(t, l)
	if c.RemoteAddr().String() != peer.LocalAddr().String() || c.LocalAddr().String() != peer.RemoteAddr().String() {
		t.Fatalf("addresses %v/%v, want %v/%v", c.RemoteAddr(), c.LocalAddr(), peer.LocalAddr(), peer.RemoteAddr())
	}
	peer.Write([]byte("ping"))
	peer.CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "ping" {
		t.Fatalf("handler read %q, %v", got, err)
	}
	if _, err := c.Write([]byte("pong after your FIN")); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	if got, err := io.ReadAll(peer); err != nil || string(got) != "pong after your FIN" {
		t.Fatalf("peer read %q, %v", got, err)
	}
	<-c.Done()
	if r := c.Closed(); r.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_PEER_CLOSED || r.GetBytesIn() != 4 || r.GetBytesOut() != 19 {
		t.Fatalf("closed %v", r)
	}

	// The handler first.
	peer2 := testkit.Dial(t, l.Addr().String())
	c2 := accept(t, l)
	c2.CloseWrite()
	if got, err := io.ReadAll(peer2); err != nil || len(got) != 0 {
		t.Fatalf("peer read %q, %v; want our FIN", got, err)
	}
	peer2.Write([]byte("still here"))
	peer2.CloseWrite()
	if got, err := io.ReadAll(c2); err != nil || string(got) != "still here" {
		t.Fatalf("handler read %q, %v after its own FIN", got, err)
	}
}

// Reset is an RST at the peer.
func TestResetIsRST(t *testing.T) {
	l := listen(t, dialClient(t))
	peer := testkit.Dial(t, l.Addr().String())
	c := accept(t, l)
	c.Reset()
	if _, err := peer.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("peer read %v, want ECONNRESET", err)
	}
	<-c.Done()
	if r := c.Closed(); r.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_HANDLER_RESET {
		t.Fatalf("closed %v", r)
	}
}

// A handler that stops reading one socket slows only that socket's peer:
// its writes block, while a second socket of the same handler flows; once
// the handler reads, every byte arrives, in order.
func TestStopReadingSlowsOnlyItsPeer(t *testing.T) {
	l := listen(t, dialClient(t))
	slow := testkit.Dial(t, l.Addr().String())
	cs := accept(t, l)
	fast := testkit.Dial(t, l.Addr().String())
	cf := accept(t, l)
	if cs.RemoteAddr().String() != slow.LocalAddr().String() {
		slow, fast = fast, slow
	}

	const total = 64 << 20 // far more than every window and buffer on the way
	data := bytes.Repeat([]byte("0123456789abcdef"), total/16)
	var sent atomic.Int64
	wrote := make(chan error, 1)
	go func() {
		n, err := slow.Write(data)
		sent.Store(int64(n))
		slow.CloseWrite()
		wrote <- err
	}()
	// The other socket goes on while the slow one is stuck.
	for i := range 20 {
		msg := []byte{byte('a' + i)}
		fast.Write(msg)
		got := make([]byte, 1)
		if _, err := io.ReadFull(cf, got); err != nil || got[0] != msg[0] {
			t.Fatalf("fast socket: %q, %v", got, err)
		}
	}
	select {
	case err := <-wrote:
		t.Fatalf("the unread socket's peer wrote all %d bytes (%v): no backpressure", sent.Load(), err)
	default:
	}
	got, err := io.ReadAll(cs)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d of %d bytes, equal=%v, %v", len(got), len(data), bytes.Equal(got, data), err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
}

// Two handlers share a listener: with room for one connection each, two
// connections go one to each. A handler that goes away resets only the
// socket it held; the other handler's socket goes on.
func TestHandlerGoneResetsOnlyItsSockets(t *testing.T) {
	l := listen(t, dialClient(t), listenerd.WithConcurrency(1))
	other, err := listenerd.Dial(listenerd.Options{NoHandover: true})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	l2, err := other.Attach(context.Background(), l.ID(), listenerd.WithConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	type accepted struct {
		c       *listenerd.Conn
		byOther bool
	}
	got := make(chan accepted, 2)
	for _, ln := range []*listenerd.Listener{l, l2} {
		go func() {
			c, err := ln.Accept()
			if err != nil {
				t.Error(err)
				got <- accepted{}
				return
			}
			got <- accepted{c.(*listenerd.Conn), ln == l2}
		}()
	}
	peers := map[string]*net.TCPConn{}
	for range 2 {
		p := testkit.Dial(t, l.Addr().String())
		peers[p.LocalAddr().String()] = p
	}
	a, b := <-got, <-got
	if a.c == nil || b.c == nil {
		t.FailNow()
	}
	if a.byOther == b.byOther {
		t.Fatal("one handler took both connections; want one each")
	}
	if a.byOther {
		a, b = b, a
	}
	mine, theirs := peers[a.c.RemoteAddr().String()], peers[b.c.RemoteAddr().String()]
	defer a.c.Close()
	other.Close() // the other handler's process goes away
	if _, err := theirs.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the gone handler's peer read %v, want ECONNRESET", err)
	}
	mine.Write([]byte("still served"))
	buf := make([]byte, 12)
	_ = a.c.SetReadDeadline(time.Now().Add(testkit.Guard))
	if _, err := io.ReadFull(a.c, buf); err != nil || string(buf) != "still served" {
		t.Fatalf("the other socket: %q, %v", buf, err)
	}
}

// With no handler attached, a connection waits its claim timeout, then
// closes NO_HANDLER.
func TestNoHandler(t *testing.T) {
	c := dialClient(t)
	ctx := context.Background()
	r, err := c.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{
		Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Stream{Stream: &listenerdv1.StreamHandler{ClaimTimeout: durationpb.New(100 * time.Millisecond)}}}}})
	if err != nil {
		t.Fatal(err)
	}
	id := r.GetListener().GetId()
	defer c.CloseListener(ctx, &listenerdv1.CloseListenerRequest{Id: id})
	from := uint64(0)
	peer := testkit.Dial(t, r.GetListener().GetStatus().GetBoundAddress())
	done := errors.New("done")
	err = c.Watch(ctx, &listenerdv1.WatchEventsRequest{ListenerIds: []string{id}, AfterSequence: &from}, func(e *listenerdv1.Event) error {
		if cl := e.GetConnectionClosed(); cl != nil {
			if cl.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_NO_HANDLER {
				t.Errorf("closed %v, want NO_HANDLER", cl)
			}
			return done
		}
		return nil
	})
	if err != done {
		t.Fatal(err)
	}
	if _, err := peer.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("peer read %v, want the end", err)
	}
}

// Limits and ACLs hold for a stream listener as for any other: over
// max_connections a connection is rejected before any handler sees it,
// and a denied source never reaches one.
func TestLimitsAndACLsApply(t *testing.T) {
	one := uint32(1)
	l := listen(t, dialClient(t), listenerd.WithLimits(&listenerdv1.Limits{MaxConnections: &one}))
	first := testkit.Dial(t, l.Addr().String())
	c := accept(t, l)
	second := testkit.Dial(t, l.Addr().String())
	if _, err := second.Read(make([]byte, 1)); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the connection over the limit read %v, want the end", err)
	}
	first.Write([]byte("served"))
	buf := make([]byte, 6)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "served" {
		t.Fatalf("the first: %q, %v", buf, err)
	}
	// Lifting the limit at runtime lets the next one through.
	if err := l.SetMaxConnections(context.Background(), -1); err != nil {
		t.Fatal(err)
	}
	testkit.Dial(t, l.Addr().String())
	accept(t, l)

	cl := dialClient(t)
	r, err := cl.CreateListener(context.Background(), &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{
		DenyCidrs: []string{"127.0.0.0/8"},
		Handler:   &listenerdv1.Handler{Kind: &listenerdv1.Handler_Stream{Stream: &listenerdv1.StreamHandler{}}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.CloseListener(context.Background(), &listenerdv1.CloseListenerRequest{Id: r.GetListener().GetId()})
	denied, err := cl.Attach(context.Background(), r.GetListener().GetId())
	if err != nil {
		t.Fatal(err)
	}
	defer denied.Close()
	p := testkit.Dial(t, r.GetListener().GetStatus().GetBoundAddress())
	if _, err := p.Read(make([]byte, 1)); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a denied source read %v, want the end", err)
	}
	// The rejection is counted just after the socket is closed.
	testkit.Eventually(t, func() bool {
		g, err := cl.GetListener(context.Background(), &listenerdv1.GetListenerRequest{Id: r.GetListener().GetId()})
		return err == nil && g.GetListener().GetStatus().GetRejectedConnections() == 1
	}, "the denied connection counted as rejected")
	g, err := cl.GetListener(context.Background(), &listenerdv1.GetListenerRequest{Id: r.GetListener().GetId()})
	if err != nil || g.GetListener().GetStatus().GetAcceptedConnections() != 0 {
		t.Fatalf("status %v, %v: a denied source was accepted", g.GetListener().GetStatus(), err)
	}
}

// io.Copy(c, c) echoes through WriteTo, frame by frame: every byte, in
// order, across frames, and it ends cleanly at the peer's FIN.
func TestCopyEchoesThroughWriteTo(t *testing.T) {
	l := listen(t, dialClient(t))
	peer := testkit.Dial(t, l.Addr().String())
	c := accept(t, l)
	if _, ok := net.Conn(c).(io.WriterTo); !ok {
		t.Fatal("*Conn is not an io.WriterTo")
	}
	copied := make(chan error, 1)
	var n int64
	go func() {
		var err error
		n, err = io.Copy(c, c)
		if err == nil {
			err = c.CloseWrite()
		}
		copied <- err
	}()
	want := bytes.Repeat([]byte("0123456789abcdef"), 3*listenerd.MaxFrame/16+7)
	go func() {
		peer.Write(want)
		peer.CloseWrite()
	}()
	got, err := io.ReadAll(peer)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("peer read %d bytes (%v), want the %d it sent", len(got), err, len(want))
	}
	if err := <-copied; err != nil || n != int64(len(want)) {
		t.Fatalf("io.Copy: %d, %v; want %d, nil", n, err, len(want))
	}
}

// A read deadline and Close interrupt a blocked WriteTo as they do Read;
// a failing writer ends it with its error.
func TestWriteToInterrupted(t *testing.T) {
	l := listen(t, dialClient(t))
	peer := testkit.Dial(t, l.Addr().String())
	c := accept(t, l)
	_ = c.SetReadDeadline(time.Time{})
	got := make(chan error, 1)
	go func() {
		_, err := c.WriteTo(io.Discard)
		got <- err
	}()
	_ = c.SetReadDeadline(time.Now().Add(-time.Second))
	if err := <-got; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("WriteTo after the deadline: %v, want a deadline error", err)
	}

	_ = c.SetReadDeadline(time.Time{})
	boom := errors.New("boom")
	go func() {
		_, err := c.WriteTo(failingWriter{boom})
		got <- err
	}()
	peer.Write([]byte("x"))
	if err := <-got; !errors.Is(err, boom) {
		t.Fatalf("WriteTo to a failing writer: %v, want boom", err)
	}

	go func() {
		_, err := c.WriteTo(io.Discard)
		got <- err
	}()
	c.Close()
	if err := <-got; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("WriteTo after Close: %v, want net.ErrClosed", err)
	}
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }
