package listener

import (
	"net/netip"
	"testing"
	"time"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/testkit"
)

// Rejections are counted by reason, and their sum is Rejected.
func TestRejectedByReason(t *testing.T) {
	m := newManager(t)
	full := create(t, m, Spec{Limits: limit(0)})
	denied := create(t, m, Spec{Deny: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	wf, wd := newWatch(t, m, full.ID()), newWatch(t, m, denied.ID())
	testkit.Dial(t, full.Info().Bound)
	testkit.Dial(t, full.Info().Bound)
	testkit.Dial(t, denied.Info().Bound)
	wf.until(countAtLeast(events.KindConnectionRejected, 2))
	wd.until(countAtLeast(events.KindConnectionRejected, 1))
	if in := full.Info(); in.Rejected != 2 || in.RejectedBy[events.RejectMaxConnections] != 2 || in.RejectedBy[events.RejectDeniedByACL] != 0 {
		t.Errorf("full: rejected %d, by reason %v", in.Rejected, in.RejectedBy)
	}
	if in := denied.Info(); in.Rejected != 1 || in.RejectedBy[events.RejectDeniedByACL] != 1 {
		t.Errorf("denied: rejected %d, by reason %v", in.Rejected, in.RejectedBy)
	}
}

// The ConnClosed hook hears each connection end, after its closed event.
func TestConnClosedHook(t *testing.T) {
	type closed struct {
		id string
		d  time.Duration
	}
	got := make(chan closed, 1)
	m := NewManager(events.NewBus(events.Options{}), nil, Options{ConnClosed: func(id string, d time.Duration) {
		got <- closed{id, d}
	}})
	t.Cleanup(func() { m.Shutdown(0) })
	l := create(t, m, Spec{})
	w := newWatch(t, m, l.ID())
	c := testkit.Dial(t, l.Info().Bound)
	w.until(countAtLeast(events.KindConnectionOpened, 1))
	c.Close()
	select {
	case h := <-got:
		evs := w.until(countAtLeast(events.KindConnectionClosed, 1))
		ev := evs[len(evs)-1]
		if h.id != l.ID() || h.d != ev.Duration || h.d <= 0 {
			t.Errorf("hook got %s %v; closed event %v", h.id, h.d, ev.Duration)
		}
	case <-time.After(guard):
		t.Fatal("hook not called")
	}
}

// A connection destroyed by a forced close of a listener already draining
// counts as destroyed, not drained: the count is taken as each connection
// ends, so the listener_closed event cannot run ahead of it.
func TestForceWhileDrainingCountsDestroyed(t *testing.T) {
	m := newManager(t)
	for i := range 20 {
		l := create(t, m, Spec{})
		w := newWatch(t, m, l.ID())
		c := testkit.Dial(t, l.Info().Bound)
		w.until(countAtLeast(events.KindConnectionOpened, 1))
		if info, err := m.Close(l.ID(), time.Hour, false); err != nil || info.State != StateDraining {
			t.Fatalf("first close: %v, %v", info.State, err)
		}
		// The second close is --force, or --drain 0, which is force too.
		// Its reply counts the connection it destroys: it is taken before.
		if info, err := m.Close(l.ID(), 0, i%2 == 0); err != nil || info.Active != 1 || info.State != StateDraining {
			t.Fatalf("second close: %d active, %v, %v; want the 1 connection it destroys, draining", info.Active, info.State, err)
		}
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("connection survived the second close")
		}
		evs := w.until(countAtLeast(events.KindListenerClosed, 1))
		if d := evs[len(evs)-1].Detail; d.Drained != 0 || d.Destroyed != 1 {
			t.Fatalf("listener_closed drained=%d destroyed=%d; want 0 and 1", d.Drained, d.Destroyed)
		}
	}
}
