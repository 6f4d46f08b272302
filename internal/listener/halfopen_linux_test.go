package listener

import (
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/testkit"
)

// A half-open connection whose peer is gone is noticed by keepalive and
// closed, with no idle timeout set: the peer ends its side, then its
// socket disappears without a word (TCP_LINGER2 makes its orphaned
// FIN_WAIT2 short), and the next keepalive probe is answered with a reset.
func TestHalfOpenPeerGoneIsClosed(t *testing.T) {
	m := newManager(t)
	for _, kind := range []string{"echo", "discard"} {
		t.Run(kind, func(t *testing.T) {
			l := create(t, m, Spec{Handler: HandlerSpec{Kind: kind}, AllowHalfOpen: true, KeepAlive: time.Second})
			w := newWatch(t, m, l.ID())
			c := testkit.Dial(t, l.Info().Bound)
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			w.until(countAtLeast(events.KindConnectionHalfClosed, 1))
			testkit.Vanish(t, c)
			evs := w.until(countAtLeast(events.KindConnectionClosed, 1))
			e := evs[len(evs)-1]
			if e.Close != events.CloseReset || e.Detail == nil || !strings.Contains(e.Detail.Error, "half-open connection lost: the peer reset it") {
				t.Fatalf("closed event %+v %+v; want reset: half-open connection lost", e, e.Detail)
			}
		})
	}
}

// keepalive is the probes' interval as well as the silence before the
// first one.
func TestKeepAliveIsIdleAndInterval(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{KeepAlive: 7 * time.Second})
	testkit.Dial(t, l.Info().Bound)
	testkit.Eventually(t, func() bool { return l.Info().Active == 1 }, "the connection to be served")
	var c *Conn
	l.mu.Lock()
	for _, served := range l.conns {
		c = served
	}
	l.mu.Unlock()
	rc, err := c.Socket().SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var idle, intvl int
	var ierr, verr error
	if err := rc.Control(func(fd uintptr) {
		idle, ierr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		intvl, verr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
	}); err != nil || ierr != nil || verr != nil {
		t.Fatalf("getsockopt: %v %v %v", err, ierr, verr)
	}
	if idle != 7 || intvl != 7 {
		t.Fatalf("keepalive idle %ds, interval %ds; want 7s and 7s", idle, intvl)
	}
}
