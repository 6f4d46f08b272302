package e2e

import (
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// queueEvents reads a ctl watch -o json stream, counting what it needs.
type queueEvents struct {
	t                        *testing.T
	w                        *stream
	opened, queued           int
	rejected                 map[listenerdv1.RejectReason]int
	closed                   int
	queuedOrder, openedOrder []string
}

func (q *queueEvents) until(cond func() bool) {
	q.t.Helper()
	for !cond() {
		var e listenerdv1.Event
		unmarshalLine(q.t, q.w.next(), &e)
		switch {
		case e.GetConnectionOpened() != nil:
			q.opened++
			q.openedOrder = append(q.openedOrder, e.GetConnectionOpened().GetConnectionId())
		case e.GetConnectionQueued() != nil:
			q.queued++
			q.queuedOrder = append(q.queuedOrder, e.GetConnectionQueued().GetConnectionId())
		case e.GetConnectionRejected() != nil:
			q.rejected[e.GetConnectionRejected().GetReason()]++
		case e.GetConnectionClosed() != nil:
			q.closed++
		}
	}
}

func watchQueue(t *testing.T, d *daemon, ref string) *queueEvents {
	t.Helper()
	list, err := d.client.ListListeners(testContext(t), &listenerdv1.ListListenersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	w := d.ctlStream("watch", "-o", "json", "--since", strconv.FormatUint(list.GetSequence(), 10), ref)
	return &queueEvents{t: t, w: w, rejected: map[listenerdv1.RejectReason]int{}}
}

func isEnd(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// The QUEUE storm through the real binaries: ctl listen --overflow queue
// with max 10 and a queue of 100, 500 dials at once. At every sampled
// moment at most 10 are served and 100 queued; 390 are rejected
// QUEUE_FULL, each with its event; once connections close, every queued
// one is served, in the order it queued.
func TestQueueStormE2E(t *testing.T) {
	const dials, max, queue = 500, 10, 100
	d := startDaemon(t)
	l := listenJSON(t, d, "--port", "0", "--mode", "echo", "--name", "q", "--max-connections", "10", "--overflow", "queue", "--queue-length", "100")
	if p := l.GetSpec().GetLimits(); p.GetOverflow() != listenerdv1.OverflowPolicy_OVERFLOW_POLICY_QUEUE || p.GetQueueLength() != queue {
		t.Fatalf("created with limits %v", p)
	}
	ev := watchQueue(t, d, "q")

	quit, sampled := make(chan struct{}), make(chan int)
	go func() {
		n := 0
		defer func() { sampled <- n }()
		for {
			r, err := d.client.GetListener(testContext(t), &listenerdv1.GetListenerRequest{Id: "q"})
			if err != nil {
				t.Errorf("get: %v", err)
				return
			}
			if st := r.GetListener().GetStatus(); st.GetActiveConnections() > max || st.GetQueuedConnections() > queue {
				t.Errorf("sampled %d served, %d queued", st.GetActiveConnections(), st.GetQueuedConnections())
				return
			}
			n++
			select {
			case <-quit:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()

	conns := make([]net.Conn, dials)
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", l.GetStatus().GetBoundAddress())
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
	ev.until(func() bool {
		return ev.opened+ev.queued+ev.rejected[listenerdv1.RejectReason_REJECT_REASON_QUEUE_FULL] >= dials
	})
	if ev.opened != max || ev.queued != queue || ev.rejected[listenerdv1.RejectReason_REJECT_REASON_QUEUE_FULL] != dials-max-queue {
		t.Fatalf("%d opened, %d queued, %v rejected", ev.opened, ev.queued, ev.rejected)
	}
	var served, rejected atomic.Int64
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			if _, err := c.Write([]byte{'q'}); err != nil && !isEnd(err) {
				t.Errorf("write: %v", err)
				return
			}
			var b [1]byte
			switch _, err := io.ReadFull(c, b[:]); {
			case err == nil && b[0] == 'q':
				served.Add(1)
			case isEnd(err):
				rejected.Add(1)
			default:
				t.Errorf("read %q: %v", b, err)
			}
		}()
	}
	wg.Wait()
	close(quit)
	if n := <-sampled; n == 0 {
		t.Fatal("no sample taken")
	}
	if served.Load() != max+queue || rejected.Load() != dials-max-queue {
		t.Fatalf("%d served, %d rejected; want %d and %d", served.Load(), rejected.Load(), max+queue, dials-max-queue)
	}
	ev.until(func() bool { return ev.opened >= max+queue })
	for i, id := range ev.queuedOrder {
		if ev.openedOrder[max+i] != id {
			t.Fatalf("served %v after the first ten, want the queue's order %v", ev.openedOrder[max:], ev.queuedOrder)
		}
	}
}

// A short queue_timeout set at runtime with ctl limit: the waiting
// connections are rejected QUEUE_TIMEOUT. Lowering max_connections under
// QUEUE closes nobody: a new arrival waits instead.
func TestQueueTimeoutAndLowerLimitE2E(t *testing.T) {
	d := startDaemon(t)
	l := listenJSON(t, d, "--port", "0", "--mode", "echo", "--name", "t", "--max-connections", "3", "--overflow", "queue")
	ev := watchQueue(t, d, "t")
	addr := l.GetStatus().GetBoundAddress()
	dialT := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(guard))
		return c
	}
	var served []net.Conn
	for range 3 {
		served = append(served, dialT())
	}
	ev.until(func() bool { return ev.opened == 3 })
	d.mustCtl("limit", "t", "--max-connections", "1")
	late := dialT()
	ev.until(func() bool { return ev.queued == 1 })
	if ev.closed != 0 {
		t.Fatalf("%d served connections closed by a lower limit", ev.closed)
	}
	for _, c := range served {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatalf("a served connection stopped being served: %v", err)
		}
	}
	out := d.mustCtl("conns", "t")
	if !strings.Contains(out, "queued") && !strings.Contains(out, "QUEUED") {
		t.Fatalf("ctl conns does not show the queued connection:\n%s", out)
	}
	d.mustCtl("limit", "t", "--queue-timeout", "100ms")
	// The late one was queued before the timeout was set; new ones get it.
	waiting := []net.Conn{dialT(), dialT()}
	ev.until(func() bool { return ev.rejected[listenerdv1.RejectReason_REJECT_REASON_QUEUE_TIMEOUT] == 2 })
	for _, c := range waiting {
		if _, err := c.Read(make([]byte, 1)); !isEnd(err) {
			t.Fatalf("a timed-out client read %v, want the end", err)
		}
	}
	// Closing the served ones serves the late one.
	for _, c := range served {
		c.Close()
	}
	ev.until(func() bool { return ev.opened == 4 })
	if _, err := late.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(late, make([]byte, 1)); err != nil {
		t.Fatalf("the late connection was not served: %v", err)
	}
}
