package listenerd_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/listenerd/listenerd/api/listenerd"
	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// Faults on a stream listener served by a Go handler: through the API
// (WithoutHandover, the bytes pass the daemon's filters) every kind
// applies; handed over, only what acts on the socket itself does.

type halfCloser interface{ CloseWrite() error }

// serve runs handler on every connection l accepts, each on its own
// goroutine, until the test ends.
func serve(t *testing.T, l *listenerd.Listener, handler func(net.Conn)) {
	t.Helper()
	testkit.Serve(t, l, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(testkit.Guard))
		handler(c)
	})
}

// echo copies the peer's bytes back until it ends its side, then ends
// its own.
func echo(c net.Conn) {
	_, _ = io.Copy(c, c)
	_ = c.(halfCloser).CloseWrite()
}

// streamListener is a listener served through the API by echo, with
// faults in force before any connection.
func streamListener(t *testing.T, faults ...*listenerdv1.Fault) (*listenerd.Client, *listenerd.Listener) {
	t.Helper()
	c := dialClient(t)
	l := listen(t, c, listenerd.WithoutHandover())
	for _, f := range faults {
		addFault(t, c, l, f)
	}
	serve(t, l, echo)
	return c, l
}

func addFault(t *testing.T, c *listenerd.Client, l *listenerd.Listener, f *listenerdv1.Fault) {
	t.Helper()
	if _, err := c.AddFault(context.Background(), &listenerdv1.AddFaultRequest{ListenerId: l.ID(), Fault: f}); err != nil {
		t.Fatalf("add fault %s: %v", f.GetName(), err)
	}
}

func removeFault(t *testing.T, c *listenerd.Client, l *listenerd.Listener, name string) {
	t.Helper()
	if _, err := c.RemoveFault(context.Background(), &listenerdv1.RemoveFaultRequest{ListenerId: l.ID(), Name: name}); err != nil {
		t.Fatalf("remove fault %s: %v", name, err)
	}
}

func p64(v float64) *float64 { return &v }

// listed returns the listener's one open connection as ListConnections
// gives it, waiting until it is there.
func listed(t *testing.T, c *listenerd.Client, l *listenerd.Listener, ok func(*listenerdv1.Connection) bool) *listenerdv1.Connection {
	t.Helper()
	var got *listenerdv1.Connection
	testkit.Eventually(t, func() bool {
		r, err := c.ListConnections(context.Background(), &listenerdv1.ListConnectionsRequest{ListenerId: l.ID()})
		if err != nil || len(r.GetConnections()) != 1 {
			return false
		}
		got = r.GetConnections()[0]
		return ok(got)
	}, "the connection listed")
	return got
}

// events returns the listener's events from the first until one that
// last accepts.
func events(t *testing.T, c *listenerd.Client, l *listenerd.Listener, last func(*listenerdv1.Event) bool) []*listenerdv1.Event {
	t.Helper()
	from := uint64(0)
	var got []*listenerdv1.Event
	ctx, cancel := context.WithTimeout(context.Background(), testkit.Guard)
	defer cancel()
	found := errors.New("found")
	err := c.Watch(ctx, &listenerdv1.WatchEventsRequest{ListenerIds: []string{l.ID()}, AfterSequence: &from}, func(e *listenerdv1.Event) error {
		got = append(got, e)
		if last(e) {
			return found
		}
		return nil
	})
	if err != found {
		t.Fatalf("watching %s: %v", l.ID(), err)
	}
	return got
}

func closedOf(id string) func(*listenerdv1.Event) bool {
	return func(e *listenerdv1.Event) bool { return e.GetConnectionClosed().GetConnectionId() == id }
}

// applied lists the faults applied to connection id among evs.
func applied(evs []*listenerdv1.Event, id string) []string {
	var names []string
	for _, e := range evs {
		if a := e.GetFaultApplied(); a != nil && a.GetConnectionId() == id {
			names = append(names, a.GetName())
		}
	}
	return names
}

func echoed(t *testing.T, peer *net.TCPConn, msg string) {
	t.Helper()
	if _, err := peer.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != msg {
		t.Fatalf("echo: %q, %v; want %q", got, err, msg)
	}
}

// Latency delays each chunk of the handler's bytes by at least its
// figure, and is reported applied to the connection.
func TestStreamFaultLatency(t *testing.T) {
	const lat = 150 * time.Millisecond
	c, l := streamListener(t, &listenerdv1.Fault{Name: "slow", Kind: listenerdv1.FaultKind_FAULT_KIND_LATENCY,
		Direction: listenerdv1.FaultDirection_FAULT_DIRECTION_OUT, Latency: durationpb.New(lat)})
	peer := testkit.Dial(t, l.Addr().String())
	for range 3 {
		t0 := time.Now()
		echoed(t, peer, "ping")
		if d := time.Since(t0); d < lat {
			t.Fatalf("a round trip took %v under a latency of %v", d, lat)
		}
	}
	cn := listed(t, c, l, func(*listenerdv1.Connection) bool { return true })
	if fs := cn.GetFaults(); len(fs) != 1 || !fs[0].GetApplies() {
		t.Fatalf("draws %v, want slow applying", fs)
	}
	peer.Close()
	if got := applied(events(t, c, l, closedOf(cn.GetId())), cn.GetId()); len(got) != 1 || got[0] != "slow" {
		t.Fatalf("faults applied %v, want [slow]", got)
	}
}

// limit_data passes exactly its bytes, then the peer reads the end (a
// FIN, no RST); the close names the fault. Out: the peer reads the
// handler's first bytes; in: the handler reads the peer's first bytes,
// then the end.
func TestStreamFaultLimitData(t *testing.T) {
	c, l := streamListener(t, &listenerdv1.Fault{Name: "five", Kind: listenerdv1.FaultKind_FAULT_KIND_LIMIT_DATA, Bytes: 5,
		Direction: listenerdv1.FaultDirection_FAULT_DIRECTION_OUT})
	peer := testkit.Dial(t, l.Addr().String())
	if _, err := peer.Write([]byte("hello world")); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(peer)
	if err != nil || string(got) != "hello" {
		t.Fatalf("read %q, %v; want hello, then the end", got, err)
	}
	peer.Close()
	evs := events(t, c, l, func(e *listenerdv1.Event) bool { return e.GetConnectionClosed() != nil })
	if cl := evs[len(evs)-1].GetConnectionClosed(); cl.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_FAULT || cl.GetFault() != "five" {
		t.Fatalf("closed %v, want FAULT by five", cl)
	}

	c = dialClient(t)
	l = listen(t, c, listenerd.WithoutHandover())
	addFault(t, c, l, &listenerdv1.Fault{Name: "five", Kind: listenerdv1.FaultKind_FAULT_KIND_LIMIT_DATA, Bytes: 5,
		Direction: listenerdv1.FaultDirection_FAULT_DIRECTION_IN})
	read := make(chan string, 1)
	serve(t, l, func(conn net.Conn) {
		got, err := io.ReadAll(conn)
		read <- fmt.Sprintf("%q, %v", got, err)
	})
	peer = testkit.Dial(t, l.Addr().String())
	if _, err := peer.Write([]byte("hello world")); err != nil {
		t.Fatal(err)
	}
	if got := <-read; got != `"hello", <nil>` {
		t.Fatalf("the handler read %s; want hello, then the end", got)
	}
	if got, err := io.ReadAll(peer); err != nil || len(got) != 0 {
		t.Fatalf("the peer read %q, %v; want the end", got, err)
	}
}

// A reset added while a handler serves the connection is an RST at the
// peer; the handler's connection ends too.
func TestStreamFaultReset(t *testing.T) {
	c := dialClient(t)
	l := listen(t, c, listenerd.WithoutHandover())
	handlerErr := make(chan error, 1)
	serve(t, l, func(conn net.Conn) {
		_, err := io.Copy(conn, conn)
		handlerErr <- err
	})
	peer := testkit.Dial(t, l.Addr().String())
	echoed(t, peer, "before")
	addFault(t, c, l, &listenerdv1.Fault{Name: "rst", Kind: listenerdv1.FaultKind_FAULT_KIND_RESET})
	if _, err := io.ReadAll(peer); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the peer read %v, want ECONNRESET", err)
	}
	if err := <-handlerErr; err == nil {
		t.Fatal("the handler's copy ended cleanly; want the reset's error")
	}
}

// timeout holds every byte while in force; removed, the bytes pass, none
// lost.
func TestStreamFaultTimeout(t *testing.T) {
	c, l := streamListener(t, &listenerdv1.Fault{Name: "stall", Kind: listenerdv1.FaultKind_FAULT_KIND_TIMEOUT})
	peer := testkit.Dial(t, l.Addr().String())
	if _, err := peer.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	cn := listed(t, c, l, func(cn *listenerdv1.Connection) bool { return cn.GetBytesIn() == 4 })
	if cn.GetBytesOut() != 0 || len(cn.GetFaults()) != 1 || !cn.GetFaults()[0].GetApplies() {
		t.Fatalf("%v: want 4 bytes in, none out, stall applying", cn)
	}
	removeFault(t, c, l, "stall")
	got := make([]byte, 4)
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != "held" {
		t.Fatalf("after removal: %q, %v", got, err)
	}
	// With a delay it ends the connection (FIN) having passed nothing.
	addFault(t, c, l, &listenerdv1.Fault{Name: "stall2", Kind: listenerdv1.FaultKind_FAULT_KIND_TIMEOUT, Delay: durationpb.New(100 * time.Millisecond)})
	peer2 := testkit.Dial(t, l.Addr().String())
	if _, err := peer2.Write([]byte("lost")); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(peer2); err != nil || len(got) != 0 {
		t.Fatalf("read %q, %v; want nothing, then the end", got, err)
	}
}

// blackhole drops the peer's bytes; its half-close still passes, and the
// handler's answer comes back.
func TestStreamFaultBlackhole(t *testing.T) {
	c := dialClient(t)
	l := listen(t, c, listenerd.WithoutHandover())
	addFault(t, c, l, &listenerdv1.Fault{Name: "hole", Kind: listenerdv1.FaultKind_FAULT_KIND_BLACKHOLE,
		Direction: listenerdv1.FaultDirection_FAULT_DIRECTION_IN})
	serve(t, l, func(conn net.Conn) {
		got, err := io.ReadAll(conn)
		fmt.Fprintf(conn, "handler read %d bytes, %v", len(got), err)
		_ = conn.(halfCloser).CloseWrite()
	})
	peer := testkit.Dial(t, l.Addr().String())
	if _, err := peer.Write([]byte("dropped")); err != nil {
		t.Fatal(err)
	}
	_ = peer.CloseWrite()
	if got, err := io.ReadAll(peer); err != nil || string(got) != "handler read 0 bytes, <nil>" {
		t.Fatalf("read %q, %v", got, err)
	}
}

// slicer cuts the peer's bytes into slices of its size: the handler reads
// them one frame, one slice, at a time, in order.
func TestStreamFaultSlicer(t *testing.T) {
	c := dialClient(t)
	l := listen(t, c, listenerd.WithoutHandover())
	addFault(t, c, l, &listenerdv1.Fault{Name: "cut", Kind: listenerdv1.FaultKind_FAULT_KIND_SLICER, SliceSize: 2,
		Direction: listenerdv1.FaultDirection_FAULT_DIRECTION_IN})
	serve(t, l, func(conn net.Conn) {
		var all []byte
		most := 0
		buf := make([]byte, 1024)
		for {
			n, err := conn.Read(buf)
			all, most = append(all, buf[:n]...), max(most, n)
			if err != nil {
				break
			}
		}
		fmt.Fprintf(conn, "%s in reads of at most %d", all, most)
		_ = conn.(halfCloser).CloseWrite()
	})
	peer := testkit.Dial(t, l.Addr().String())
	if _, err := peer.Write([]byte("abcdefghij")); err != nil {
		t.Fatal(err)
	}
	_ = peer.CloseWrite()
	if got, err := io.ReadAll(peer); err != nil || string(got) != "abcdefghij in reads of at most 2" {
		t.Fatalf("read %q, %v", got, err)
	}
}

// Under latency and slow_close both ways, half-closes pass in order after
// the bytes: the handler reads the peer's bytes and end, then answers on
// the half-open connection, and the peer reads the answer and the end.
func TestStreamFaultHalfClosePasses(t *testing.T) {
	c := dialClient(t)
	l := listen(t, c, listenerd.WithoutHandover())
	addFault(t, c, l, &listenerdv1.Fault{Name: "lat", Kind: listenerdv1.FaultKind_FAULT_KIND_LATENCY, Latency: durationpb.New(20 * time.Millisecond)})
	addFault(t, c, l, &listenerdv1.Fault{Name: "fin", Kind: listenerdv1.FaultKind_FAULT_KIND_SLOW_CLOSE, Delay: durationpb.New(30 * time.Millisecond)})
	serve(t, l, func(conn net.Conn) {
		got, err := io.ReadAll(conn)
		if err != nil {
			return
		}
		_, _ = conn.Write(append(got, '!'))
		_ = conn.(halfCloser).CloseWrite()
	})
	peer := testkit.Dial(t, l.Addr().String())
	if _, err := peer.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	_ = peer.CloseWrite()
	if got, err := io.ReadAll(peer); err != nil || string(got) != "abc!" {
		t.Fatalf("read %q, %v; want abc! then the end", got, err)
	}
}

// A fault at probability 0 leaves the connection untouched: listed as not
// applying, never applied, closed by its peer.
func TestStreamFaultProbabilityZero(t *testing.T) {
	c, l := streamListener(t,
		&listenerdv1.Fault{Name: "rst", Kind: listenerdv1.FaultKind_FAULT_KIND_RESET, Probability: p64(0)},
		&listenerdv1.Fault{Name: "one", Kind: listenerdv1.FaultKind_FAULT_KIND_LIMIT_DATA, Bytes: 1, Probability: p64(0)})
	peer := testkit.Dial(t, l.Addr().String())
	echoed(t, peer, "untouched")
	cn := listed(t, c, l, func(*listenerdv1.Connection) bool { return true })
	if fs := cn.GetFaults(); len(fs) != 2 || fs[0].GetApplies() || fs[1].GetApplies() {
		t.Fatalf("draws %v, want two, neither applying", fs)
	}
	_ = peer.CloseWrite()
	if got, err := io.ReadAll(peer); err != nil || len(got) != 0 {
		t.Fatalf("read %q, %v; want the end", got, err)
	}
	evs := events(t, c, l, closedOf(cn.GetId()))
	if got := applied(evs, cn.GetId()); len(got) != 0 {
		t.Fatalf("faults applied %v, want none", got)
	}
	if cl := evs[len(evs)-1].GetConnectionClosed(); cl.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_PEER_CLOSED {
		t.Fatalf("closed %v, want PEER_CLOSED", cl)
	}
}

// resetOnOpen connects and reads to the end, returning the error of the
// connect or of the read: an RST sent as the connection opens can beat
// connect(2)'s return on loopback, and either then fails with it.
func resetOnOpen(addr string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(testkit.Guard))
	_, err = io.ReadAll(c)
	return err
}

// acceptSide checks refuse (an RST, the rejection naming the fault) and
// delay_accept (held at least its delay, then served) on l, whose handler
// echoes: through the API or handed over alike, as both act before the
// connection is admitted.
func acceptSide(t *testing.T, c *listenerd.Client, l *listenerd.Listener, echoOnce func(*net.TCPConn)) {
	t.Helper()
	addFault(t, c, l, &listenerdv1.Fault{Name: "no", Kind: listenerdv1.FaultKind_FAULT_KIND_REFUSE})
	if err := resetOnOpen(l.Addr().String()); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("refused: %v, want ECONNRESET", err)
	}
	evs := events(t, c, l, func(e *listenerdv1.Event) bool { return e.GetConnectionRejected() != nil })
	if r := evs[len(evs)-1].GetConnectionRejected(); r.GetReason() != listenerdv1.RejectReason_REJECT_REASON_FAULT || r.GetFault() != "no" {
		t.Fatalf("rejected %v, want FAULT by no", r)
	}
	removeFault(t, c, l, "no")
	const hold = 150 * time.Millisecond
	addFault(t, c, l, &listenerdv1.Fault{Name: "wait", Kind: listenerdv1.FaultKind_FAULT_KIND_DELAY_ACCEPT, Delay: durationpb.New(hold)})
	t0 := time.Now()
	peer := testkit.Dial(t, l.Addr().String())
	echoOnce(peer)
	if d := time.Since(t0); d < hold {
		t.Fatalf("served %v after the dial under delay_accept %v", d, hold)
	}
}

func TestStreamFaultAcceptSide(t *testing.T) {
	c, l := streamListener(t)
	acceptSide(t, c, l, func(peer *net.TCPConn) { echoed(t, peer, "admitted") })
}

// Handed over, a connection's bytes never pass the daemon.

// Accept-side faults act before the handover.
func TestHandoverFaultAcceptSide(t *testing.T) {
	c := handoverClient(t)
	l := listen(t, c)
	acceptSide(t, c, l, func(peer *net.TCPConn) {
		h := acceptHanded(t, l)
		if _, err := peer.Write([]byte("admitted")); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 8)
		if _, err := io.ReadFull(h, got); err != nil || string(got) != "admitted" {
			t.Fatalf("the handler read %q, %v", got, err)
		}
	})
}

// A reset fault resets a handed-over socket under its handler: an RST at
// the peer (ECONNRESET, not the FIN a shutdown would send), ECONNRESET at
// the handler's next read, and the bytes that passed counted.
func TestHandoverFaultReset(t *testing.T) {
	c := handoverClient(t)
	l := listen(t, c)
	peer := testkit.Dial(t, l.Addr().String())
	h := acceptHanded(t, l)
	if _, err := peer.Write([]byte("one")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 3)
	if _, err := io.ReadFull(h, got); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Write([]byte("two!")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(peer, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	addFault(t, c, l, &listenerdv1.Fault{Name: "rst", Kind: listenerdv1.FaultKind_FAULT_KIND_RESET, Delay: durationpb.New(10 * time.Millisecond)})
	if _, err := io.ReadAll(peer); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the peer read %v, want ECONNRESET", err)
	}
	if _, err := h.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the handler read %v, want ECONNRESET", err)
	}
	cl := closedEvent(t, c, l.ID(), h.ID())
	if cl.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_FAULT || cl.GetFault() != "rst" || cl.GetBytesIn() != 3 || cl.GetBytesOut() != 4 {
		t.Fatalf("closed %v; want FAULT by rst, 3 in, 4 out", cl)
	}
}

// The byte kinds cannot act on a handed-over socket: it is handed over
// untouched, listed as not applying, and no fault_applied claims them.
func TestHandoverByteFaultsDoNotApply(t *testing.T) {
	c := handoverClient(t)
	l := listen(t, c)
	for _, f := range []*listenerdv1.Fault{
		{Name: "two", Kind: listenerdv1.FaultKind_FAULT_KIND_LIMIT_DATA, Bytes: 2},
		{Name: "hole", Kind: listenerdv1.FaultKind_FAULT_KIND_BLACKHOLE},
		{Name: "stall", Kind: listenerdv1.FaultKind_FAULT_KIND_TIMEOUT},
		{Name: "after", Kind: listenerdv1.FaultKind_FAULT_KIND_RESET, Bytes: 1}, // after bytes: counted on the byte path
	} {
		addFault(t, c, l, f)
	}
	peer := testkit.Dial(t, l.Addr().String())
	h := acceptHanded(t, l)
	// One added once it is handed over does not apply either.
	addFault(t, c, l, &listenerdv1.Fault{Name: "slow", Kind: listenerdv1.FaultKind_FAULT_KIND_LATENCY, Latency: durationpb.New(time.Hour)})
	if _, err := peer.Write([]byte("whole")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(h, got); err != nil || string(got) != "whole" {
		t.Fatalf("the handler read %q, %v", got, err)
	}
	if _, err := h.Write([]byte("back")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(peer, got[:4]); err != nil || string(got[:4]) != "back" {
		t.Fatalf("the peer read %q, %v", got[:4], err)
	}
	cn := listed(t, c, l, func(cn *listenerdv1.Connection) bool { return len(cn.GetFaults()) == 5 })
	for _, f := range cn.GetFaults() {
		if f.GetApplies() {
			t.Errorf("%s listed as applying to a handed-over connection", f.GetFault())
		}
	}
	h.Close()
	if got := applied(events(t, c, l, closedOf(h.ID())), h.ID()); len(got) != 0 {
		t.Fatalf("faults applied %v to a handed-over connection, want none", got)
	}
}
