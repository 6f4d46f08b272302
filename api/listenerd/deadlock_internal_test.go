package listenerd

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/listenerd/listenerd/internal/testkit"
)

// An offered connection's take waits for one of the client connection's
// streams (the daemon serves 128 at once on it) while the streams are
// held by connections that wait for Accept: Accept must not wait on the
// take, and the streams kept parked ahead must leave a take its stream,
// or nothing is served again (issue 15). Two listeners share the client
// connection here, so that the streams run out with no race: an idle
// one's streams parked ahead, and a busy one's connections.
func TestOfferTakenWhileStreamsRunOut(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*testkit.Guard)
	defer cancel()
	c := readyClient(t)
	idle, err := c.Listen(ctx, "127.0.0.1:0") // the default concurrency, 64, and its streams ahead
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	testkit.Eventually(t, func() bool { return idle.parked.Load() == idle.want }, "the idle listener's streams parked")
	busy, err := c.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	accepted := make(chan net.Conn, maxStreams)
	go func() {
		for {
			a, err := busy.Accept()
			if err != nil {
				return
			}
			accepted <- a
			go func() { _, _ = io.Copy(a, a); _ = a.Close() }()
		}
	}()
	// Connections held open, as many as the client connection's streams
	// leave beside the two attach streams and the idle listener's.
	held := maxStreams - 2 - int(idle.want)
	peers := make([]net.Conn, 0, held)
	defer func() {
		for _, p := range peers {
			p.Close()
		}
	}()
	for range held {
		peers = append(peers, echoed(t, busy.Addr().String(), nil))
	}
	for range held {
		select {
		case <-accepted:
		case <-ctx.Done():
			t.Fatal("the held connections were not all accepted")
		}
	}
	// One more: no stream is parked for it (or none has room), so it is
	// offered, and its take waits for a stream.
	offered, err := net.Dial("tcp", busy.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer offered.Close()
	testkit.Eventually(t, func() bool { return busy.offered.Load() > 0 }, "a connection offered")
	// The held ones end: their streams are free again, or park again.
	for _, p := range peers {
		_ = p.(*net.TCPConn).CloseWrite()
		_, _ = io.ReadAll(p)
		p.Close()
	}
	peers = nil
	// A new connection, on a stream parked again or taken, and the offered
	// one are served.
	echoed(t, busy.Addr().String(), nil)
	echoed(t, "", offered)
}

// echoed dials addr (or uses c), checks that its bytes come back within
// the guard, and returns the connection, still open.
func echoed(t *testing.T, addr string, c net.Conn) net.Conn {
	t.Helper()
	if c == nil {
		var err error
		if c, err = net.Dial("tcp", addr); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.SetDeadline(time.Now().Add(testkit.Guard))
	if _, err := c.Write([]byte("served")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("served"))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("no echo within the guard (%v): Accept is stuck, or a take waits for a stream nobody frees: %v", testkit.Guard, err)
	}
	_ = c.SetDeadline(time.Time{})
	return c
}

// The streams kept parked ahead leave room on the client connection for
// every listener's attach stream and concurrency: 63 beside a concurrency
// of 64, none for a second such listener on the same client, whose
// connections are offered and taken.
func TestReadyStreamsWithinTheClientsRoom(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*testkit.Guard)
	defer cancel()
	c := readyClient(t)
	first, err := c.Listen(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if first.want != maxStreams-1-64 {
		t.Fatalf("streams wanted ahead: %d, want %d", first.want, maxStreams-1-64)
	}
	testkit.Eventually(t, func() bool { return first.parked.Load() == first.want }, "the first listener's streams parked")
	second, err := c.Listen(ctx, "127.0.0.1:0", WithConcurrency(64))
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	echoThrough(t, second, 3)
	if n := second.opens.Load(); n != 0 {
		t.Fatalf("the second listener opened %d streams ahead, want none: the client connection has no room for them", n)
	}
	if n := second.offered.Load(); n != 3 {
		t.Fatalf("%d connections offered to the second listener, want 3", n)
	}
	if n := c.idleReady.Load(); n != int64(first.want) {
		t.Fatalf("%d streams counted ahead on the client, want the first listener's %d", n, first.want)
	}
}
