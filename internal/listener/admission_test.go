package listener

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/testkit"
)

func lastReject(evs []events.Event) events.RejectReason {
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Kind == events.KindConnectionRejected {
			return evs[i].Reject
		}
	}
	return events.RejectUnspecified
}

func TestACL(t *testing.T) {
	tests := []struct {
		name        string
		allow, deny []string
		src         string
		admitted    bool
	}{
		{"no lists", nil, nil, "127.0.0.1", true},
		{"denied host", nil, []string{"127.0.0.2/32"}, "127.0.0.2", false},
		{"other host not denied", nil, []string{"127.0.0.2/32"}, "127.0.0.3", true},
		{"not in allow list", []string{"10.0.0.0/8"}, nil, "127.0.0.1", false},
		{"in allow list", []string{"127.0.0.0/8"}, nil, "127.0.0.1", true},
		{"deny wins", []string{"127.0.0.0/8"}, []string{"127.0.0.4/32"}, "127.0.0.4", false},
		{"v6 prefix does not match v4", []string{"::/0"}, nil, "127.0.0.1", false},
		{"mapped prefix form", []string{"0.0.0.0/0"}, nil, "127.0.0.5", true},
	}
	m := newManager(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := Spec{}
			for _, a := range tc.allow {
				spec.Allow = append(spec.Allow, netip.MustParsePrefix(a))
			}
			for _, d := range tc.deny {
				spec.Deny = append(spec.Deny, netip.MustParsePrefix(d))
			}
			l := create(t, m, spec)
			w := newWatch(t, m, l.ID())
			testkit.DialFrom(t, tc.src, l.Info().Bound)
			evs := w.until(func(evs []events.Event) bool {
				return count(evs, events.KindConnectionOpened)+count(evs, events.KindConnectionRejected) > 0
			})
			if got := count(evs, events.KindConnectionOpened) == 1; got != tc.admitted {
				t.Fatalf("admitted %v, want %v", got, tc.admitted)
			}
			if !tc.admitted && lastReject(evs) != events.RejectDeniedByACL {
				t.Fatalf("reject reason %v", lastReject(evs))
			}
		})
	}
}

func TestPerSourceLimit(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Limits: Limits{PerSource: 1}})
	w := newWatch(t, m, l.ID())
	addr := l.Info().Bound
	a := testkit.DialFrom(t, "127.0.0.1", addr)
	w.until(countAtLeast(events.KindConnectionOpened, 1))
	testkit.DialFrom(t, "127.0.0.1", addr)
	evs := w.until(countAtLeast(events.KindConnectionRejected, 1))
	if lastReject(evs) != events.RejectPerSourceLimit {
		t.Fatalf("reason %v", lastReject(evs))
	}
	testkit.DialFrom(t, "127.0.0.2", addr) // another source has its own count
	w.until(countAtLeast(events.KindConnectionOpened, 2))
	a.Close()
	w.until(countAtLeast(events.KindConnectionClosed, 1))
	testkit.DialFrom(t, "127.0.0.1", addr) // the slot is free again
	w.until(countAtLeast(events.KindConnectionOpened, 3))
}

// A per-source limit set at runtime counts the connections already open
// from that source, as max_connections counts those already open.
func TestPerSourceLimitSetAtRuntime(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{})
	w := newWatch(t, m, l.ID())
	addr := l.Info().Bound
	for range 3 {
		testkit.DialFrom(t, "127.0.0.1", addr)
	}
	w.until(countAtLeast(events.KindConnectionOpened, 3))
	if _, err := m.SetLimits(l.ID(), func(lim Limits) (Limits, error) { lim.PerSource = 1; return lim, nil }); err != nil {
		t.Fatal(err)
	}
	testkit.DialFrom(t, "127.0.0.1", addr)
	evs := w.until(countAtLeast(events.KindConnectionRejected, 1))
	if count(evs, events.KindConnectionOpened) != 3 || lastReject(evs) != events.RejectPerSourceLimit {
		t.Fatalf("opened %d, reject reason %v; want 3 and the per-source limit", count(evs, events.KindConnectionOpened), lastReject(evs))
	}
}

func TestAcceptRateLimit(t *testing.T) {
	m := newManager(t)
	// One token, refilled every ~17 minutes: the second connection is over.
	l := create(t, m, Spec{Limits: Limits{AcceptRate: 0.001, AcceptBurst: 1}})
	w := newWatch(t, m, l.ID())
	testkit.Dial(t, l.Info().Bound)
	testkit.Dial(t, l.Info().Bound)
	evs := w.until(countAtLeast(events.KindConnectionRejected, 1))
	if count(evs, events.KindConnectionOpened) != 1 || lastReject(evs) != events.RejectRateLimit {
		t.Fatalf("opened %d, reason %v", count(evs, events.KindConnectionOpened), lastReject(evs))
	}
	if l.Info().Rejected != 1 {
		t.Fatalf("rejected counter %d", l.Info().Rejected)
	}
}

// Changing another limit keeps the accept-rate bucket as it is.
func TestAcceptRateSurvivesOtherChanges(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Limits: Limits{AcceptRate: 0.001, AcceptBurst: 1}})
	w := newWatch(t, m, l.ID())
	testkit.Dial(t, l.Info().Bound) // takes the only token
	w.until(countAtLeast(events.KindConnectionOpened, 1))
	if _, err := m.SetLimits(l.ID(), func(lim Limits) (Limits, error) { lim.IdleTimeout = time.Hour; return lim, nil }); err != nil {
		t.Fatal(err)
	}
	testkit.Dial(t, l.Info().Bound)
	evs := w.until(countAtLeast(events.KindConnectionRejected, 1))
	if count(evs, events.KindConnectionOpened) != 1 || lastReject(evs) != events.RejectRateLimit {
		t.Fatalf("opened %d, reason %v: the idle-timeout change refilled the bucket", count(evs, events.KindConnectionOpened), lastReject(evs))
	}
}

func TestMaxListenersMessage(t *testing.T) {
	m := NewManager(events.NewBus(events.Options{}), nil, Options{MaxListeners: 1})
	t.Cleanup(func() { m.Shutdown(0) })
	create(t, m, Spec{})
	_, err := m.Create(context.Background(), "", Spec{})
	if !errors.Is(err, ErrLimit) || !strings.HasSuffix(err.Error(), "at most 1 listener") {
		t.Fatalf("second listener over --max-listeners 1: %v", err)
	}
}

func TestDaemonWideCaps(t *testing.T) {
	m := NewManager(events.NewBus(events.Options{}), nil, Options{MaxListeners: 2, MaxConnections: 1})
	t.Cleanup(func() { m.Shutdown(0) })
	a, b := create(t, m, Spec{}), create(t, m, Spec{})
	if _, err := m.Create(context.Background(), "", Spec{}); err == nil {
		t.Fatal("third listener created over --max-listeners 2")
	}
	wa, wb := newWatch(t, m, a.ID()), newWatch(t, m, b.ID())
	testkit.Dial(t, a.Info().Bound)
	wa.until(countAtLeast(events.KindConnectionOpened, 1))
	testkit.Dial(t, b.Info().Bound)
	evs := wb.until(countAtLeast(events.KindConnectionRejected, 1))
	if lastReject(evs) != events.RejectDaemonLimit {
		t.Fatalf("reason %v", lastReject(evs))
	}
}

func TestIdleTimeoutAndMaxLifetime(t *testing.T) {
	m := newManager(t)
	for _, tc := range []struct {
		lim  Limits
		want events.CloseReason
	}{
		{Limits{IdleTimeout: 20 * time.Millisecond}, events.CloseIdleTimeout},
		{Limits{MaxLifetime: 20 * time.Millisecond}, events.CloseMaxLifetime},
	} {
		for _, pause := range []bool{false, true} {
			l := create(t, m, Spec{Limits: tc.lim, PauseOnConnect: pause})
			w := newWatch(t, m, l.ID())
			c := testkit.Dial(t, l.Info().Bound)
			evs := w.until(countAtLeast(events.KindConnectionClosed, 1))
			if got := evs[len(evs)-1].Close; got != tc.want {
				t.Fatalf("pause %v: reason %v, want %v", pause, got, tc.want)
			}
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Fatal("client still open")
			}
		}
	}
}
