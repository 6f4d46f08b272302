package listener

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/testkit"
)

func queueLimits(max int64, length int, timeout time.Duration) Limits {
	return Limits{MaxConnections: AtMost(max), Overflow: OverflowQueue, QueueLength: length, QueueTimeout: timeout}
}

func rejectedWith(evs []events.Event, r events.RejectReason) int {
	n := 0
	for _, e := range evs {
		if e.Kind == events.KindConnectionRejected && e.Reject == r {
			n++
		}
	}
	return n
}

// sampler checks, until stopped, that a listener never serves more than
// max connections nor queues more than queue.
func sampler(t *testing.T, l *Listener, max, queue uint64) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	var samples atomic.Int64
	go func() {
		defer close(done)
		for {
			in := l.Info()
			if in.Active > max || in.Queued > queue {
				t.Errorf("sampled %d served and %d queued, want at most %d and %d", in.Active, in.Queued, max, queue)
				return
			}
			samples.Add(1)
			select {
			case <-quit:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	return func() {
		close(quit)
		<-done
		if samples.Load() == 0 {
			t.Error("the sampler took no sample")
		}
	}
}

// The QUEUE storm: max_connections 10, queue_length 100, 500 dials at once.
// Ten are served, a hundred wait, every other one is rejected QUEUE_FULL
// with its event; as served connections close, every waiting one is
// served, first in first out, and never more than ten at once.
func TestQueueStorm(t *testing.T) {
	const dials, max, queue = 500, 10, 100
	m := newManager(t)
	l := create(t, m, Spec{Limits: queueLimits(max, queue, 0), Handler: HandlerSpec{Kind: "echo"}})
	w := newWatch(t, m, l.ID())
	stop := sampler(t, l, max, queue)

	conns := make([]net.Conn, dials)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", l.Info().Bound)
			if err != nil {
				t.Errorf("dial: %v", err)
				return
			}
			_ = c.SetDeadline(time.Now().Add(guard))
			conns[i] = c
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// Every dial has its fate before any connection closes.
	evs := w.until(func(evs []events.Event) bool {
		return count(evs, events.KindConnectionOpened)+count(evs, events.KindConnectionQueued)+count(evs, events.KindConnectionRejected) >= dials
	})
	if o, q, r := count(evs, events.KindConnectionOpened), count(evs, events.KindConnectionQueued), rejectedWith(evs, events.RejectQueueFull); o != max || q != queue || r != dials-max-queue {
		t.Fatalf("%d opened, %d queued, %d rejected QUEUE_FULL; want %d, %d, %d", o, q, r, max, queue, dials-max-queue)
	}
	if in := l.Info(); in.Active != max || in.Queued != queue || in.RejectedBy[events.RejectQueueFull] != dials-max-queue {
		t.Fatalf("status: %d served, %d queued, %d rejected QUEUE_FULL", in.Active, in.Queued, in.RejectedBy[events.RejectQueueFull])
	}
	conns2, _ := l.Connections()
	waiting := 0
	for _, c := range conns2 {
		if c.Queued {
			waiting++
		}
	}
	if len(conns2) != max+queue || waiting != queue {
		t.Fatalf("ListConnections: %d, %d of them queued; want %d and %d", len(conns2), waiting, max+queue, queue)
	}

	// Each client sends a byte and waits for its echo, then closes: a
	// served one echoes at once, a queued one once it is served, a
	// rejected one reads the end.
	var served, rejected atomic.Int64
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Write([]byte{'q'}); err != nil && !isReset(err) {
				t.Errorf("write: %v", err)
				return
			}
			var b [1]byte
			_, err := io.ReadFull(c, b[:])
			switch {
			case err == nil && b[0] == 'q':
				served.Add(1)
			case errors.Is(err, io.EOF) || isReset(err):
				rejected.Add(1)
			default:
				t.Errorf("read: %q, %v", b, err)
			}
			c.Close()
		}()
	}
	wg.Wait()
	stop()
	if served.Load() != max+queue || rejected.Load() != dials-max-queue {
		t.Fatalf("%d served and %d rejected, want %d and %d", served.Load(), rejected.Load(), max+queue, dials-max-queue)
	}
	evs = w.until(countAtLeast(events.KindConnectionOpened, max+queue))
	// First in, first out: connections were opened in the order they
	// queued.
	var queuedOrder, openedOrder []uint64
	for _, e := range evs {
		switch e.Kind {
		case events.KindConnectionQueued:
			queuedOrder = append(queuedOrder, e.Conn)
		case events.KindConnectionOpened:
			openedOrder = append(openedOrder, e.Conn)
		}
	}
	for i, n := range queuedOrder {
		if openedOrder[max+i] != n {
			t.Fatalf("opened %v after the first ten, want the queue's order %v", openedOrder[max:], queuedOrder)
		}
	}
	if in := l.Info(); in.Accepted != max+queue {
		t.Fatalf("accepted %d, want %d", in.Accepted, max+queue)
	}
}

func isReset(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// With a queue_timeout, connections that wait too long are rejected
// QUEUE_TIMEOUT and their clients see the end; the served one is left be.
func TestQueueTimeout(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Limits: queueLimits(1, 10, 50*time.Millisecond)})
	w := newWatch(t, m, l.ID())
	held := testkit.Dial(t, l.Info().Bound)
	w.until(countAtLeast(events.KindConnectionOpened, 1))
	var waiting []*net.TCPConn
	for range 5 {
		waiting = append(waiting, testkit.Dial(t, l.Info().Bound))
	}
	evs := w.until(func(evs []events.Event) bool { return rejectedWith(evs, events.RejectQueueTimeout) == 5 })
	if q := count(evs, events.KindConnectionQueued); q != 5 {
		t.Fatalf("%d queued, want 5", q)
	}
	for _, e := range evs {
		if e.Kind == events.KindConnectionRejected && (e.Conn == 0 || e.Duration <= 0) {
			t.Fatalf("rejected from the queue without its id and wait: %+v", e)
		}
	}
	for _, c := range waiting {
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !isReset(err) {
			t.Fatalf("a timed-out client read %v, want the end", err)
		}
	}
	if in := l.Info(); in.Active != 1 || in.Queued != 0 || in.RejectedBy[events.RejectQueueTimeout] != 5 {
		t.Fatalf("status: %d served, %d queued, %d QUEUE_TIMEOUT", in.Active, in.Queued, in.RejectedBy[events.RejectQueueTimeout])
	}
	_ = held
}

// Lowering max_connections under QUEUE never closes a served connection:
// new arrivals wait until enough have ended.
func TestQueueLimitLoweredKicksNobody(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Limits: queueLimits(4, 10, 0), Handler: HandlerSpec{Kind: "echo"}})
	w := newWatch(t, m, l.ID())
	var served []*net.TCPConn
	for range 4 {
		served = append(served, testkit.Dial(t, l.Info().Bound))
	}
	w.until(countAtLeast(events.KindConnectionOpened, 4))
	if _, err := m.SetLimits(l.ID(), func(lim Limits) (Limits, error) { lim.MaxConnections = AtMost(2); return lim, nil }); err != nil {
		t.Fatal(err)
	}
	late := testkit.Dial(t, l.Info().Bound)
	evs := w.until(countAtLeast(events.KindConnectionQueued, 1))
	if c := count(evs, events.KindConnectionClosed); c != 0 {
		t.Fatalf("%d served connections closed by the lower limit", c)
	}
	for _, c := range served { // all four still served
		echoOnce(t, c)
	}
	// Two end: still at the new limit, the late one waits.
	served[0].Close()
	served[1].Close()
	w.until(countAtLeast(events.KindConnectionClosed, 2))
	if in := l.Info(); in.Active != 2 || in.Queued != 1 {
		t.Fatalf("after two closed: %d served, %d queued; want 2 and 1", in.Active, in.Queued)
	}
	served[2].Close()
	w.until(countAtLeast(events.KindConnectionOpened, 5))
	echoOnce(t, late)
	// Raising the limit serves waiting ones at once.
	l2 := create(t, m, Spec{Limits: queueLimits(0, 10, 0), Handler: HandlerSpec{Kind: "echo"}})
	w2 := newWatch(t, m, l2.ID())
	c := testkit.Dial(t, l2.Info().Bound)
	w2.until(countAtLeast(events.KindConnectionQueued, 1))
	if _, err := m.SetLimits(l2.ID(), func(lim Limits) (Limits, error) { lim.MaxConnections = Cap{}; return lim, nil }); err != nil {
		t.Fatal(err)
	}
	echoOnce(t, c)
}

// A queued connection can be kicked (rejected KICKED), and the queue is
// turned away when its listener closes (rejected LISTENER_CLOSED).
func TestQueueKickAndClose(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Limits: queueLimits(1, 10, 0)})
	w := newWatch(t, m, l.ID())
	testkit.Dial(t, l.Info().Bound)
	w.until(countAtLeast(events.KindConnectionOpened, 1))
	a, b := testkit.Dial(t, l.Info().Bound), testkit.Dial(t, l.Info().Bound)
	evs := w.until(countAtLeast(events.KindConnectionQueued, 2))
	var first uint64
	for _, e := range evs {
		if e.Kind == events.KindConnectionQueued {
			first = e.Conn
			break
		}
	}
	if err := m.CloseConnection(events.ConnID(l.ID(), first), false); err != nil {
		t.Fatal(err)
	}
	w.until(func(evs []events.Event) bool { return rejectedWith(evs, events.RejectKicked) == 1 })
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Fatalf("kicked client read %v, want the end", err)
	}
	if _, err := m.Close(l.ID(), time.Hour, false); err != nil {
		t.Fatal(err)
	}
	w.until(func(evs []events.Event) bool { return rejectedWith(evs, events.RejectListenerClosed) == 1 })
	if _, err := b.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Fatalf("client queued at the close read %v, want the end", err)
	}
	if in := l.Info(); in.Queued != 0 || in.Active != 1 {
		t.Fatalf("after the close: %d queued, %d served (draining)", in.Queued, in.Active)
	}
}
