package listener

import (
	"net/netip"
	"testing"
	"time"

	"github.com/listenerd/listenerd/internal/events"
)

// Rejections are counted by reason, and their sum is Rejected.
func TestRejectedByReason(t *testing.T) {
	m := newManager(t)
	full := create(t, m, Spec{Limits: limit(0)})
	denied := create(t, m, Spec{Limits: unlimited(), Deny: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	wf, wd := newWatch(t, m, full.ID()), newWatch(t, m, denied.ID())
	dial(t, full.Info().Bound)
	dial(t, full.Info().Bound)
	dial(t, denied.Info().Bound)
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
	l := create(t, m, Spec{Limits: unlimited()})
	w := newWatch(t, m, l.ID())
	c := dial(t, l.Info().Bound)
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
