package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// gated is a gate on a loopback listener and the connections it accepts.
type gated struct {
	g        *gate
	addr     string
	accepted chan net.Conn
}

func startGate(t *testing.T, max, perSource int, timeout time.Duration) *gated {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gd := &gated{g: newGate(ln, max, perSource, timeout, newRefusalLog(slog.New(slog.DiscardHandler))),
		addr: ln.Addr().String(), accepted: make(chan net.Conn, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := gd.g.Accept()
			if err != nil {
				return
			}
			gd.accepted <- c
		}
	}()
	t.Cleanup(func() {
		gd.g.Close()
		<-done
		close(gd.accepted)
		for c := range gd.accepted {
			c.Close()
		}
	})
	return gd
}

// dial connects from src and returns the client's end and the gate's.
func (gd *gated) dial(t *testing.T, src string) (client, server net.Conn) {
	t.Helper()
	client = testkit.DialFrom(t, src, gd.addr)
	select {
	case server = <-gd.accepted:
	case <-time.After(guard):
		t.Fatalf("the gate did not accept a connection from %s", src)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}

// closedByServer waits until the server has closed c.
func closedByServer(t *testing.T, c net.Conn, what string) {
	t.Helper()
	if n, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("%s: read %d, %v; want EOF, closed by the gate", what, n, err)
	}
}

// trust marks the gate's connection s authenticated, as the auth
// interceptor does.
func (gd *gated) trust(s net.Conn) {
	gd.g.trust(peer.NewContext(context.Background(), &peer.Peer{Addr: s.RemoteAddr()}))
}

func source(ip string) netip.Prefix { return netip.PrefixFrom(netip.MustParseAddr(ip), 32) }

// Unauthenticated connections make way: the oldest of a source past its
// cap, the oldest of all when every slot is taken; authenticated ones
// never do, and when every slot is theirs, a new connection waits.
func TestGateMakesWayForCredentials(t *testing.T) {
	gd := startGate(t, 3, 2, time.Hour)
	c1, _ := gd.dial(t, "127.0.0.1")
	_, s2 := gd.dial(t, "127.0.0.1")
	c3, _ := gd.dial(t, "127.0.0.1") // a third from 127.0.0.1: the first makes way
	closedByServer(t, c1, "the oldest of a source past its cap")
	gd.trust(s2)
	if all, from := gd.g.unauthenticated(source("127.0.0.1")); all != 1 || from != 1 {
		t.Fatalf("%d unauthenticated, %d from 127.0.0.1; want 1 and 1", all, from)
	}
	_, s4 := gd.dial(t, "127.0.0.2") // the last slot
	_, s5 := gd.dial(t, "127.0.0.3") // every slot taken: the oldest unauthenticated makes way
	closedByServer(t, c3, "the oldest unauthenticated connection, every slot taken")
	gd.trust(s4)
	gd.trust(s5)
	if all, _ := gd.g.unauthenticated(netip.Prefix{}); all != 0 {
		t.Fatalf("%d unauthenticated, want none", all)
	}
	// Every slot holds an authenticated connection: the next one waits in
	// the kernel's queue until one of them goes.
	testkit.DialFrom(t, "127.0.0.4", gd.addr)
	s2.Close()
	select {
	case s := <-gd.accepted:
		s.Close()
	case <-time.After(guard):
		t.Fatal("the waiting connection was not accepted once a slot was free")
	}
}

// A connection without an authenticated call is closed after the gate's
// timeout; an authenticated one is not timed.
func TestGateTimesOutUnauthenticated(t *testing.T) {
	short := startGate(t, 4, 4, 50*time.Millisecond)
	c, _ := short.dial(t, "127.0.0.1")
	closedByServer(t, c, "a connection with no authenticated call past the timeout")
	long := startGate(t, 4, 4, time.Hour)
	_, s := long.dial(t, "127.0.0.1")
	long.trust(s)
	long.g.mu.Lock()
	gc := long.g.byAddr[s.RemoteAddr().String()]
	timed := gc.elem != nil || gc.timer.Stop() // Stop is false once stopped
	long.g.mu.Unlock()
	if timed {
		t.Fatal("an authenticated connection is still timed")
	}
}

// IPv6 sources count by their /64.
func TestGateSourceOfIPv6(t *testing.T) {
	a := &net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:aaaa::1"), Port: 1}
	b := &net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:bbbb::9"), Port: 2}
	v4 := &net.TCPAddr{IP: net.ParseIP("::ffff:10.1.2.3"), Port: 3}
	if sourceOf(a) != sourceOf(b) || sourceOf(a).String() != "2001:db8:1:2::/64" || sourceOf(v4).String() != "10.1.2.3/32" {
		t.Fatalf("sources %v %v %v", sourceOf(a), sourceOf(b), sourceOf(v4))
	}
}

// The refusal log lets a burst through, then one line a second, each
// saying how many it did not log.
func TestRefusalLogIsRateLimited(t *testing.T) {
	buf := &testkit.Buffer{}
	r := newRefusalLog(slog.New(slog.NewTextHandler(buf, nil)))
	now := time.Unix(1000, 0)
	r.now = func() time.Time { return now }
	for range refusalBurst + 5 {
		r.refused(slog.LevelInfo, "refused")
	}
	if n := strings.Count(buf.String(), "refused"); n != refusalBurst {
		t.Fatalf("%d lines for %d refusals at once, want the burst, %d", n, refusalBurst+5, refusalBurst)
	}
	now = now.Add(refusalEvery)
	r.refused(slog.LevelInfo, "refused")
	if !strings.Contains(buf.String(), "refusals_not_logged=5") {
		t.Fatalf("the line after the burst does not count the 5 not logged:\n%s", buf.String())
	}
}

// Through the daemon: connections without credentials, from many sources
// and from the token holder's own, fill every slot and stay (their
// timeout is long here), and the token holder is still served, each
// time; calls with a wrong token are logged at a bounded rate.
func TestTokenHoldersServedDuringFlood(t *testing.T) {
	p := newPKI(t)
	d := startRun(t, Config{Ephemeral: true, API: APIConfig{Listen: "127.0.0.1:0", TokenFile: p.tokenFile,
		MaxConns: 8, UnauthPerSource: 2, UnauthTimeout: time.Hour}})
	for i := range 12 {
		testkit.DialFrom(t, "127.0.1."+strconv.Itoa(1+i%9), d.addr)
	}
	for range 4 {
		testkit.Dial(t, d.addr)
	}
	authed := metadata.AppendToOutgoingContext(testContext(t), "authorization", "Bearer "+p.token)
	for i := range 3 {
		c := listenerdv1.NewListenerServiceClient(d.dial(t, insecure.NewCredentials())) // a connection of its own
		if _, err := c.ListListeners(authed, &listenerdv1.ListListenersRequest{}); err != nil {
			t.Fatalf("token holder's call %d during the flood: %v", i, err)
		}
	}
	wrong := metadata.AppendToOutgoingContext(testContext(t), "authorization", "Bearer "+p.wrongToken)
	c := listenerdv1.NewListenerServiceClient(d.dial(t, insecure.NewCredentials()))
	start := time.Now()
	const calls = 50
	for range calls {
		if _, err := c.ListListeners(wrong, &listenerdv1.ListListenersRequest{}); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("call with a wrong token: %v", err)
		}
	}
	most := refusalBurst + int(time.Since(start)/refusalEvery) + 1
	if n := strings.Count(d.log.String(), "grpc.code=Unauthenticated"); n > most || n >= calls {
		t.Fatalf("%d lines for %d refused calls; want at most %d", n, calls, most)
	}
}
