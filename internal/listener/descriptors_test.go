package listener

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/testkit"
)

// The descriptor budget (the open-file limit less the reserve) is shared
// by the listeners (two each), their connections (one each) and forward's
// upstreams (one each): past it a connection is rejected DAEMON_LIMIT, a
// listener is not created (ErrLimit naming the limit) and an upstream is
// not dialled (UPSTREAM_FAILED), and what closes gives its share back.
func TestDescriptorBudget(t *testing.T) {
	m := NewManager(events.NewBus(events.Options{}), nil, Options{FDLimit: 16, FDReserve: 8})
	t.Cleanup(func() { m.Shutdown(0) })
	l := create(t, m, Spec{})
	w := newWatch(t, m, l.ID())
	var conns []*net.TCPConn
	for range 7 {
		conns = append(conns, testkit.Dial(t, l.Info().Bound))
	}
	evs := w.until(func(evs []events.Event) bool {
		return count(evs, events.KindConnectionOpened)+count(evs, events.KindConnectionRejected) == 7
	})
	if n := count(evs, events.KindConnectionOpened); n != 6 {
		t.Fatalf("%d connections served with room for 6", n)
	}
	for _, e := range evs {
		if e.Kind == events.KindConnectionRejected && e.Reject != events.RejectDaemonLimit {
			t.Fatalf("rejected %v, want daemon_limit", e.Reject)
		}
	}
	if c := m.Caps(); c != (Caps{MaxConnections: 8, Connections: 6, FDLimit: 16, FDReserve: 8, FDHeld: 8}) {
		t.Fatalf("caps %+v; want 8 connections at most, 6 open, 8 of 16 descriptors kept, 8 held", c)
	}
	_, err := m.Create(context.Background(), "", Spec{})
	if !errors.Is(err, ErrLimit) || !strings.Contains(err.Error(), "open-file limit (RLIMIT_NOFILE) of 16, 8 are kept for its API") {
		t.Fatalf("create with no descriptor free: %v; want ErrLimit naming the limit", err)
	}

	// Three connections go: room for a forward listener and one
	// connection, but not its upstream.
	for _, c := range conns[:3] {
		c.Close()
	}
	testkit.Eventually(t, func() bool { return m.Caps().FDHeld == 5 }, "three connections to give their descriptors back")
	fw := create(t, m, Spec{Handler: ForwardTo(l.Info().Bound, 0)})
	fwatch := newWatch(t, m, fw.ID())
	testkit.Dial(t, fw.Info().Bound)
	fevs := fwatch.until(countAtLeast(events.KindConnectionClosed, 1))
	if e := fevs[len(fevs)-1]; e.Close != events.CloseUpstreamFailed || e.Detail == nil || !strings.Contains(e.Detail.Error, "out of file descriptors") {
		t.Fatalf("forward with no descriptor for its upstream: %+v %+v", e, e.Detail)
	}

	if _, err := m.Close(fw.ID(), 0, true); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Close(l.ID(), 0, true); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, func() bool { return m.Caps().FDHeld == 0 }, "every descriptor to be given back")
}
