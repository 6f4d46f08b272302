package listener

import (
	"bytes"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/testkit"
)

// upper is a filter that upper-cases ASCII letters and counts the
// half-closes it passes on.
type upper struct {
	next   Stage
	closes *atomic.Int32
}

func (u upper) Write(p []byte) (int, error) {
	return u.next.Write(bytes.ToUpper(p))
}

func (u upper) CloseWrite() error {
	u.closes.Add(1)
	return u.next.CloseWrite()
}

func upperFilter(closes *atomic.Int32) Filter {
	return func(next Stage) Stage { return upper{next, closes} }
}

// Filters sit on each direction of the byte path on their own: an echo
// with an out filter changes what goes back, and the client's FIN passes
// through the in filter to the daemon's side.
func TestFiltersOnEcho(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}})
	var inCloses, outCloses atomic.Int32
	l.SetFilters(&Filters{In: []Filter{upperFilter(&inCloses)}})
	c := testkit.Dial(t, l.Info().Bound)
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "HELLO" {
		t.Fatalf("echo through an upper-casing filter: %q, %v", got, err)
	}
	_ = c.CloseWrite()
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after our FIN: %q, %v; want the daemon's FIN", rest, err)
	}
	if inCloses.Load() != 1 {
		t.Fatalf("the half-close passed the in filter %d times, want 1", inCloses.Load())
	}
	// Taken off: new connections go the fast way again, unchanged.
	l.SetFilters(nil)
	c2 := testkit.Dial(t, l.Info().Bound)
	echoOnce(t, c2)
	// On the out direction, bytes are counted as written to the client.
	l.SetFilters(&Filters{Out: []Filter{upperFilter(&outCloses)}})
	w := newWatch(t, m, l.ID())
	c3 := testkit.Dial(t, l.Info().Bound)
	if _, err := c3.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c3, got[:3]); err != nil || string(got[:3]) != "ABC" {
		t.Fatalf("echo through an out filter: %q, %v", got[:3], err)
	}
	c3.Close()
	closed := func(evs []events.Event) *events.Event {
		for i, e := range evs {
			if e.Kind == events.KindConnectionClosed && e.Conn == 3 {
				return &evs[i]
			}
		}
		return nil
	}
	e := closed(w.until(func(evs []events.Event) bool { return closed(evs) != nil }))
	if e.BytesIn != 3 || e.BytesOut != 3 {
		t.Fatalf("closed with %d in, %d out; want 3 and 3", e.BytesIn, e.BytesOut)
	}
}

// Through a forward with filters, a half-close goes on in each direction:
// the client's FIN reaches the upstream, whose reply after it comes back,
// then the upstream's FIN.
func TestFiltersOnForwardPassHalfClose(t *testing.T) {
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	done := make(chan error, 1)
	go func() {
		c, err := up.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		b, err := io.ReadAll(c) // until the client's FIN
		if err == nil {
			_, err = c.Write(append([]byte("got "), b...))
		}
		done <- err
	}()
	m := newManager(t)
	l := create(t, m, Spec{Handler: ForwardTo(up.Addr().String(), 0)})
	var inCloses, outCloses atomic.Int32
	l.SetFilters(&Filters{In: []Filter{upperFilter(&inCloses)}, Out: []Filter{upperFilter(&outCloses)}})
	c := testkit.Dial(t, l.Info().Bound)
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	reply, err := io.ReadAll(c)
	if err != nil || string(reply) != "GOT PING" {
		t.Fatalf("reply after our FIN: %q, %v; want %q", reply, err, "GOT PING")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if inCloses.Load() != 1 || outCloses.Load() != 1 {
		t.Fatalf("half-closes through the filters: in %d, out %d; want 1 each", inCloses.Load(), outCloses.Load())
	}
}

// A paused connection waits, unread, until a handler takes it; then the
// handler serves it from its first byte.
func TestPausedConnectionWaitsUntilTaken(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}, PauseOnConnect: true})
	w := newWatch(t, m, l.ID())
	c := testkit.Dial(t, l.Info().Bound)
	if _, err := c.Write([]byte("early")); err != nil {
		t.Fatal(err)
	}
	evs := w.until(countAtLeast(events.KindConnectionOpened, 1))
	var n uint64
	for _, e := range evs {
		if e.Kind == events.KindConnectionOpened {
			n = e.Conn
		}
	}
	if in := l.Info(); in.BytesIn != 0 {
		t.Fatalf("a paused connection was read: %d bytes in", in.BytesIn)
	}
	if err := l.resume(n + 1); err == nil {
		t.Fatal("resumed a connection that does not exist")
	}
	if err := l.resume(n); err != nil {
		t.Fatal(err)
	}
	if err := l.resume(n); err == nil {
		t.Fatal("took a connection twice")
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "early" {
		t.Fatalf("after it was taken: %q, %v", got, err)
	}
}
