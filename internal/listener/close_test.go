package listener

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/testkit"
)

// echoOnce proves c is served: one round trip through an echo listener.
func echoOnce(t *testing.T, c net.Conn) {
	t.Helper()
	msg := []byte("ping")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
		t.Fatalf("echo: %v", err)
	}
}

// closedEvent waits for the one connection-closed event w sees.
func closedEvent(w *watch) events.Event {
	evs := w.until(countAtLeast(events.KindConnectionClosed, 1))
	for _, e := range evs {
		if e.Kind == events.KindConnectionClosed {
			return e
		}
	}
	panic("unreachable")
}

// A listener already draining when the daemon shuts down (ctl close with
// its 30 s default, then SIGTERM) is bounded by the shutdown's timeout, not
// its own.
func TestShutdownBoundsAnEarlierDrain(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}})
	w := newWatch(t, m, l.ID())
	c := testkit.Dial(t, l.Info().Bound)
	defer c.Close()
	echoOnce(t, c)
	if _, err := m.Close(l.ID(), time.Hour, false); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		m.Shutdown(time.Millisecond)
	}()
	waitFor(t, "a shutdown with a 1 ms timeout while a 1 h drain runs", stopped)
	if e := closedEvent(w); e.Close != events.CloseDaemonShutdown {
		t.Fatalf("connection closed with %v, want daemon shutdown", e.Close)
	}
}

// A connection accepted just as Close begins is drained like the others:
// it is not destroyed because the listener looked empty a moment before.
func TestConnAcceptedAsCloseBeginsIsDrained(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}})
	accepted, release := make(chan struct{}), make(chan struct{})
	hook := func() {
		close(accepted)
		<-release
	}
	testHookAccepted.Store(&hook)
	t.Cleanup(func() { testHookAccepted.Store(nil) })
	c := testkit.Dial(t, l.Info().Bound)
	defer c.Close()
	waitFor(t, "the accept", accepted)

	closed := make(chan error, 1)
	go func() {
		_, err := m.Close(l.ID(), time.Hour, false)
		closed <- err
	}()
	// The close has begun, and waits for the accept loop: a state with no
	// signal to wait on.
	testkit.Eventually(t, func() bool { return l.Info().State == StateDraining }, "the close to begin")
	close(release)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	testHookAccepted.Store(nil)
	echoOnce(t, c) // still served: draining, not destroyed
	if in := l.Info(); in.Active != 1 || in.State != StateDraining {
		t.Fatalf("after close: %d active, %v; want 1 draining", in.Active, in.State)
	}
}

// A client that resets a forwarded connection is the reason it closed,
// not its upstream, which the daemon closed in turn.
func TestForwardClientResetIsReset(t *testing.T) {
	upAddr, accept := upstream(t)
	m := newManager(t)
	l := create(t, m, Spec{Handler: ForwardTo(upAddr, 0)})
	w := newWatch(t, m, l.ID())
	c := testkit.Dial(t, l.Info().Bound)
	accept()
	_ = c.SetLinger(0)
	c.Close() // RST
	if e := closedEvent(w); e.Close != events.CloseReset {
		t.Fatalf("client reset reported as %v, want reset", e.Close)
	}
}

// A peer that sends and never reads stalls the echo on its write: that is
// idle too, and idle_timeout ends it, whether the bytes went through the
// buffer or were spliced.
func TestEchoIdleWhileStuckWriting(t *testing.T) {
	for _, tc := range []struct {
		size     int   // bytes a write
		readMore int64 // bytes read back before the client stops reading
	}{
		{512, 0},            // small writes: the echo's buffer
		{64 << 10, 8 << 20}, // bulk: by the time reading stops, the echo splices
	} {
		size := tc.size
		m := newManager(t)
		l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}, Limits: Limits{IdleTimeout: 50 * time.Millisecond}})
		w := newWatch(t, m, l.ID())
		c := testkit.Dial(t, l.Info().Bound)
		if tc.readMore == 0 {
			_ = c.SetReadBuffer(4096)
		} else {
			go func() { _, _ = io.CopyN(io.Discard, c, tc.readMore) }()
		}
		wrote := make(chan struct{})
		go func() { // writes until the daemon closes the connection
			defer close(wrote)
			buf := make([]byte, size)
			_ = c.SetWriteDeadline(time.Now().Add(guard))
			for {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
		if e := closedEvent(w); e.Close != events.CloseIdleTimeout {
			t.Fatalf("writes of %d B: closed with %v, want idle timeout", size, e.Close)
		}
		c.Close()
		<-wrote
	}
}

// idle_timeout ends a forwarded connection on which nothing moves either
// way, as it ends the other handlers' connections.
func TestForwardIdleTimeout(t *testing.T) {
	upAddr, accept := upstream(t)
	m := newManager(t)
	l := create(t, m, Spec{Limits: Limits{IdleTimeout: 50 * time.Millisecond},
		Handler: ForwardTo(upAddr, 0)})
	w := newWatch(t, m, l.ID())
	c := testkit.Dial(t, l.Info().Bound)
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil { // one move, then silence
		t.Fatal(err)
	}
	uc := accept()
	if _, err := io.ReadFull(uc, make([]byte, 5)); err != nil {
		t.Fatalf("upstream read: %v", err)
	}
	if e := closedEvent(w); e.Close != events.CloseIdleTimeout {
		t.Fatalf("silent forwarded connection closed with %v, want idle timeout", e.Close)
	}
}

// upstream listens for one connection. accept waits for it (failing the
// test if none comes); it is closed at the test's end.
func upstream(t *testing.T) (addr string, accept func() net.Conn) {
	t.Helper()
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	held := make(chan net.Conn, 1)
	go func() {
		if c, err := up.Accept(); err == nil {
			held <- c
		}
		close(held)
	}()
	return up.Addr().String(), func() net.Conn {
		t.Helper()
		select {
		case c, ok := <-held:
			if !ok {
				t.Fatal("the upstream's accept failed")
			}
			t.Cleanup(func() { c.Close() })
			return c
		case <-time.After(guard):
			t.Fatalf("no upstream connection within %v", guard)
			return nil
		}
	}
}

// readSlowly reads n bytes from c, chunk bytes every 100 ms: a reader that
// takes something in every idle timeout (2 s in these tests), but far too
// slowly for the kernel's send buffer, once full, to wake a writer within
// one.
func readSlowly(c net.Conn, n int64, chunk int) error {
	buf := make([]byte, chunk)
	for n > 0 {
		m, err := c.Read(buf[:min(int64(len(buf)), n)])
		n -= int64(m)
		if err != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond) // pacing the reader, not waiting for readiness
	}
	return nil
}

// writeUntilClosed writes to c until a write fails (c is closed).
func writeUntilClosed(c net.Conn) {
	buf := make([]byte, 64<<10)
	_ = c.SetWriteDeadline(time.Now().Add(guard))
	for {
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// idle_timeout counts from the last byte moved: a slow reader that keeps
// taking bytes keeps its echo connection, however long a burst takes.
func TestEchoIdleSparesASlowReader(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}, Limits: Limits{IdleTimeout: 4 * time.Second}})
	c := testkit.Dial(t, l.Info().Bound)
	defer c.Close()
	_ = c.SetReadBuffer(64 << 10)
	const total = 800 << 10 // at most 80 KiB/s: 2.5 idle timeouts long
	go writeUntilClosed(c)  // the echo always has more to send back
	if err := readSlowly(c, total, 8<<10); err != nil {
		t.Fatalf("slow reader cut off: %v", err)
	}
	if n := l.Info().Active; n != 1 {
		t.Fatalf("%d connections open after the slow read, want 1: closed while bytes flowed", n)
	}
}

// The same for a forwarded connection whose upstream streams to a slow
// client.
func TestForwardIdleSparesASlowReader(t *testing.T) {
	t.Parallel()
	upAddr, accept := upstream(t)
	m := newManager(t)
	l := create(t, m, Spec{Limits: Limits{IdleTimeout: 4 * time.Second},
		Handler: ForwardTo(upAddr, 0)})
	c := testkit.Dial(t, l.Info().Bound)
	defer c.Close()
	_ = c.SetReadBuffer(64 << 10)
	uc := accept()
	const total = 800 << 10 // at most 80 KiB/s
	go writeUntilClosed(uc) // the upstream always has more to send
	if err := readSlowly(c, total, 8<<10); err != nil {
		t.Fatalf("slow reader cut off: %v", err)
	}
	// What the kernel had queued still reaches a client after a close, so
	// the connection itself must still be open.
	if n := l.Info().Active; n != 1 {
		t.Fatalf("%d connections open after the slow read, want 1: closed while bytes flowed", n)
	}
}

// A client that half-closes and then resets while its upstream is still
// sending is the reason too: the copy failed writing to the client.
func TestForwardResetAfterHalfCloseIsReset(t *testing.T) {
	upAddr, accept := upstream(t)
	m := newManager(t)
	l := create(t, m, Spec{Handler: ForwardTo(upAddr, 0)})
	w := newWatch(t, m, l.ID())
	c := testkit.Dial(t, l.Info().Bound)
	uc := accept()
	go writeUntilClosed(uc)
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 64<<10)); err != nil { // the upstream's bytes flow
		t.Fatal(err)
	}
	_ = c.SetLinger(0)
	c.Close() // RST
	if e := closedEvent(w); e.Close != events.CloseReset {
		t.Fatalf("client reset after a half-close reported as %v, want reset", e.Close)
	}
}
