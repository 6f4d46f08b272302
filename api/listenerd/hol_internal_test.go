package listenerd

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// leaveUnread has the peer of an accepted connection send msg and leave
// (a reset, once the daemon has read msg: a FIN alone would leave the
// connection half-open), and waits until the daemon has closed the
// connection: msg waits on a's stream, ahead of its closed, for a Read
// that the application does not make.
func leaveUnread(t *testing.T, c *Client, l *Listener, peer *net.TCPConn, a *Conn, msg string) {
	t.Helper()
	if _, err := peer.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, func() bool {
		r, err := c.ListConnections(context.Background(), &listenerdv1.ListConnectionsRequest{ListenerId: l.ID()})
		if err != nil {
			return false
		}
		for _, x := range r.GetConnections() {
			if x.GetId() == a.ID() {
				return x.GetBytesIn() == uint64(len(msg))
			}
		}
		return false
	}, "the peer's bytes read by the daemon")
	_ = peer.SetLinger(0)
	_ = peer.Close()
	testkit.Eventually(t, func() bool {
		r, err := c.ListConnections(context.Background(), &listenerdv1.ListConnectionsRequest{ListenerId: l.ID()})
		if err != nil {
			return false
		}
		for _, x := range r.GetConnections() {
			if x.GetId() == a.ID() {
				return false
			}
		}
		return true
	}, "the first connection closed on the daemon")
}

// listenOnStream listens with opts, and accepts one connection from a
// new peer, on a stream parked ahead (no offer).
func listenOnStream(t *testing.T, opts ...ListenOption) (*Client, *Listener, *net.TCPConn, *Conn) {
	t.Helper()
	c := readyClient(t)
	l, err := c.Listen(context.Background(), "127.0.0.1:0", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	testkit.Eventually(t, func() bool { return l.parked.Load() >= 1 }, "a stream parked")
	peer := testkit.Dial(t, l.Addr().String())
	a, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	if n := l.offered.Load(); n != 0 {
		t.Fatalf("%d connections offered; want the first on the stream parked ahead", n)
	}
	return c, l, peer, a.(*Conn)
}

// Issue 15: with one stream ahead, an application that holds a Conn whose
// peer left, its last bytes unread and the Conn not closed, does not hold
// up the next connection: the stream is not given the next connection
// until the application has let go of the first (here it never does
// during the wait), and the next comes another way at once.
func TestUnreadConnDoesNotHoldTheNext(t *testing.T) {
	c, l, p1, a := listenOnStream(t, WithReadyStreams(1), WithConcurrency(4))
	leaveUnread(t, c, l, p1, a, "unread")

	p2 := testkit.Dial(t, l.Addr().String())
	got := make(chan net.Conn, 1)
	go func() {
		b, err := l.Accept()
		if err != nil {
			t.Error(err)
		}
		got <- b
	}()
	var b net.Conn
	select {
	case b = <-got:
	case <-time.After(testkit.Guard):
		_ = a.Close() // lets the Accept go, for the next test
		<-got
		t.Fatalf("the next connection was not accepted within %v while the first Conn was held unread", testkit.Guard)
	}
	if b == nil {
		t.FailNow()
	}
	defer b.Close()
	_ = b.SetDeadline(time.Now().Add(testkit.Guard))
	if _, err := b.Write([]byte("second")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len("second"))
	if _, err := io.ReadFull(p2, buf); err != nil || string(buf) != "second" {
		t.Fatalf("the next connection's peer read %q, %v", buf, err)
	}

	// The first Conn still has its bytes, then the end (the peer reset
	// it).
	buf = make([]byte, 16)
	if n, err := a.Read(buf); err != nil || string(buf[:n]) != "unread" {
		t.Fatalf("the held Conn read %q, %v; want its peer's last bytes", buf[:n], err)
	}
	if n, err := a.Read(buf); err == nil {
		t.Fatalf("the held Conn read %q after its peer's last bytes; want an error", buf[:n])
	}
	_ = a.Close()
	_ = b.Close()
	_ = p2.Close()
	// The listener goes on serving.
	p3 := testkit.Dial(t, l.Addr().String())
	d, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Write([]byte("third")); err != nil {
		t.Fatal(err)
	}
	_ = d.Close()
	if all, err := io.ReadAll(p3); err != nil || string(all) != "third" {
		t.Fatalf("the third peer read %q, %v", all, err)
	}
}

// A handler that writes and never reads learns that its peer left: its
// Write fails once the connection has closed, although the peer's last
// bytes are still unread on the stream (on a reused stream the daemon
// dropped such writes, and they succeeded for ever).
func TestWriteOnlyConnLearnsPeerLeft(t *testing.T) {
	for _, ready := range []int{1, 4} {
		c, l, peer, a := listenOnStream(t, WithReadyStreams(ready))
		leaveUnread(t, c, l, peer, a, "hello")
		wrote := make(chan error, 1)
		go func() {
			for {
				if _, err := a.Write([]byte("tick\n")); err != nil {
					wrote <- err
					return
				}
			}
		}()
		select {
		case err := <-wrote:
			t.Logf("ready %d: the write failed with %v", ready, err)
		case <-time.After(testkit.Guard):
			_ = a.Close() // lets it go, for the next test
			<-wrote
			t.Fatalf("ready %d: Write still succeeds %v after the peer left", ready, testkit.Guard)
		}
		_ = a.Close()
	}
}
