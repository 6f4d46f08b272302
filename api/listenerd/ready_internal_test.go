package listenerd

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/listenerd/listenerd/internal/testkit"
)

// readyClient dials the test daemon (TestMain's) with the bytes going
// through the API.
func readyClient(t *testing.T) *Client {
	t.Helper()
	c, err := Dial(Options{NoHandover: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// echoThrough dials l's address n times at once, has l echo each, and
// checks every answer.
func echoThrough(t *testing.T, l *Listener, n int) {
	t.Helper()
	errs := make(chan error, n)
	for range n {
		go func() {
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			_, _ = c.Write([]byte("ahead"))
			_ = c.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(c)
			if err == nil && string(got) != "ahead" {
				err = io.ErrUnexpectedEOF
			}
			errs <- err
		}()
	}
	for range n {
		a, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		go func() { _, _ = io.Copy(a, a); _ = a.Close() }()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// The streams opened ahead serve connections with no offer; with them
// turned off, every connection is offered.
func TestReadyStreamsServeWithoutOffers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := readyClient(t)
	l, err := c.Listen(ctx, "127.0.0.1:0", WithReadyStreams(3))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for round := range 3 {
		testkit.Eventually(t, func() bool { return l.parked.Load() >= 3 }, "three streams parked") // a new one may park as the reused ones do: four
		echoThrough(t, l, 3)
		if n := l.offered.Load(); n != 0 {
			t.Fatalf("round %d: %d connections were offered, want none", round, n)
		}
	}

	off, err := c.Listen(ctx, "127.0.0.1:0", WithReadyStreams(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer off.Close()
	echoThrough(t, off, 3)
	if n := off.offered.Load(); n != 3 {
		t.Fatalf("without streams ahead %d connections were offered, want 3", n)
	}
}

// A process with streams ahead and one taking offers share a listener;
// when the first closes (detaches), its parked streams end and every
// connection after goes to the second.
func TestReadyStreamsMixedAndDetach(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := readyClient(t)
	owner, err := c.Listen(ctx, "127.0.0.1:0", WithReadyStreams(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	ahead, err := readyClient(t).Attach(ctx, owner.ID(), WithReadyStreams(2))
	if err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, func() bool { return ahead.parked.Load() == 2 }, "two streams parked")

	// Both serve: each connection held open goes to the least loaded,
	// the owner (attached first) on ties.
	served := make(chan net.Conn, 4)
	var wg sync.WaitGroup
	for _, l := range []*Listener{owner, ahead} {
		wg.Go(func() {
			for range 2 {
				a, err := l.Accept()
				if err != nil {
					t.Error(err)
					return
				}
				served <- a
			}
		})
	}
	var held []net.Conn
	for range 4 {
		p, err := net.Dial("tcp", owner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, p)
	}
	wg.Wait()
	if owner.offered.Load() != 2 || ahead.offered.Load() != 0 {
		t.Fatalf("offers: %d to the owner, %d to the process with streams ahead; want 2 and 0", owner.offered.Load(), ahead.offered.Load())
	}
	for _, p := range held {
		_ = p.Close()
		_ = (<-served).Close()
	}

	if err := ahead.Close(); err != nil {
		t.Fatal(err)
	}
	if n := ahead.parked.Load(); n != 0 {
		t.Fatalf("%d streams still parked after Close", n)
	}
	echoThrough(t, owner, 4)
	if n := owner.offered.Load(); n != 6 {
		t.Fatalf("the owner was offered %d connections, want 6", n)
	}
}

// A ready stream serves one connection after another: with one stream
// ahead and one connection at a time, every connection comes on the same
// stream, none is offered, and a Conn whose connection has closed cannot
// write into the next one on its stream. Each Conn is closed before its
// peer leaves: Close's end says done, and the daemon parks the stream
// again at closed, with no take after it.
func TestReadyStreamReused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := readyClient(t).Listen(ctx, "127.0.0.1:0", WithReadyStreams(1))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var prev *Conn
	for i := range 10 {
		// Parked: the daemon parks a reused stream before its closed when
		// the Conn was closed first.
		testkit.Eventually(t, func() bool { return l.parked.Load() == 1 }, "the stream parked")
		peer, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		a, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c := a.(*Conn)
		if prev != nil {
			// The previous connection closed, and its stream serves this
			// one: what its Conn writes now must go nowhere.
			if n, err := prev.Write([]byte("stale")); err == nil || n != 0 {
				t.Fatalf("connection %d: a write on the closed one before it: %d, %v; want an error", i, n, err)
			}
			if err := prev.Reset(); err != nil {
				t.Fatal(err)
			}
		}
		want := fmt.Sprintf("hello %d", i)
		if _, err := c.Write([]byte(want)); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(peer)
		if err != nil || string(got) != want {
			t.Fatalf("connection %d: peer read %q, %v; want %q", i, got, err, want)
		}
		_ = peer.Close()
		<-c.Done()
		if r := c.Closed(); r.GetConnectionId() != c.ID() || r.GetBytesOut() != uint64(len(want)) {
			t.Fatalf("connection %d: closed %v; want %s with %d bytes out", i, r, c.ID(), len(want))
		}
		prev = c
	}
	if n, o := l.opens.Load(), l.offered.Load(); n != 1 || o != 0 {
		t.Fatalf("%d streams opened, %d connections offered; want one stream for all ten, no offer", n, o)
	}
}
