package listener

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/testkit"
)

// The old manager hands its listening socket to a new one: the new one
// accepts on the same port with the next connection number, while a
// connection open on the old one goes on there and drains; the old one
// publishes no listener_closed for the listener it handed over.
func TestHandoffKeepsThePortAndDrains(t *testing.T) {
	oldBus := events.NewBus(events.Options{})
	old := NewManager(oldBus, nil, Options{})
	l := create(t, old, Spec{Handler: HandlerSpec{Kind: "echo"}})
	addr := l.Info().Bound
	long := testkit.Dial(t, addr)
	echoOnce(t, long)
	w := newWatch(t, old, l.ID())

	h, err := old.PrepareHandoff()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Create(context.Background(), "", Spec{Handler: HandlerSpec{Kind: "echo"}}); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("create while handing off: %v", err)
	}
	if len(h.Records) != 1 || h.Files[l.ID()] == nil {
		t.Fatalf("handoff: %d records, files %v", len(h.Records), h.Files)
	}
	nb := events.NewBus(events.Options{})
	nm := NewManager(nb, nil, Options{})
	defer nm.Shutdown(0)
	a, err := nm.Adopt(context.Background(), h.Records, h.Files)
	if err != nil {
		t.Fatal(err)
	}
	counters := h.Stop()
	if c := counters[l.ID()]; c.NextConn != 1 || c.Accepted != 1 {
		t.Fatalf("counters %+v", c)
	}
	a.Start(counters)
	nl, err := nm.Get(l.ID())
	if err != nil || nl.Info().Bound != addr || nl.Info().State != StateListening {
		t.Fatalf("adopted: %+v, %v", nl.Info(), err)
	}
	after := uint64(0)
	nw, _, err := nb.Watch(events.Filter{}, &after)
	if err != nil {
		t.Fatal(err)
	}
	defer nw.Close()
	fresh := testkit.Dial(t, addr)
	echoOnce(t, fresh)
	nwatch := &watch{t: t, w: nw}
	opened := nwatch.until(countAtLeast(events.KindConnectionOpened, 1))
	if opened[0].Conn != 2 {
		t.Fatalf("first connection on the new manager is number %d, want 2", opened[0].Conn)
	}
	if nl.Info().Accepted != 2 {
		t.Fatalf("accepted %d", nl.Info().Accepted)
	}
	fresh.Close()

	echoOnce(t, long)
	drained := make(chan struct{})
	go func() {
		h.Drain(guard)
		close(drained)
	}()
	long.Close()
	<-drained
	evs := w.until(countAtLeast(events.KindConnectionClosed, 1))
	if n := count(evs, events.KindListenerClosed); n != 0 {
		t.Fatalf("old manager published %d listener_closed", n)
	}
	echoOnce(t, testkit.Dial(t, addr))
}

// A handoff given up leaves the manager as it was.
func TestHandoffCancel(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}})
	h, err := m.PrepareHandoff()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.PrepareHandoff(); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("second handoff: %v", err)
	}
	h.Cancel()
	echoOnce(t, testkit.Dial(t, l.Info().Bound))
	create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}})
}

// A listener FAILED before the upgrade, or whose socket the new policy
// refuses, is adopted FAILED; an adoption never started can be shut down.
func TestAdoptFailedAndAbandon(t *testing.T) {
	old := newManager(t)
	l := create(t, old, Spec{Handler: HandlerSpec{Kind: "echo"}})
	h, err := old.PrepareHandoff()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Cancel()
	nm := NewManager(events.NewBus(events.Options{}), nil, Options{})
	files := map[string]*os.File{}
	a, err := nm.Adopt(context.Background(), h.Records, files)
	if err != nil {
		t.Fatal(err)
	}
	if info, _ := nm.Get(l.ID()); info.Info().State != StateFailed {
		t.Fatalf("adopted without a socket: %v", info.Info().State)
	}
	a.Abandon()
	nm.Shutdown(0)

	f, err := l.ln.File()
	if err != nil {
		t.Fatal(err)
	}
	nm2 := NewManager(events.NewBus(events.Options{}), nil, Options{})
	a2, err := nm2.Adopt(context.Background(), h.Records, map[string]*os.File{l.ID(): f})
	if err != nil {
		t.Fatal(err)
	}
	if a2.Listening() != 1 {
		t.Fatalf("listening %d", a2.Listening())
	}
	a2.Abandon()
	nm2.Shutdown(0)
	echoOnce(t, testkit.Dial(t, l.Info().Bound))
}
