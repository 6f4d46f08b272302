package listener

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/testkit"
)

// gateStore is a Persister whose first Save blocks until open is called
// (and then fails with firstErr, when set), and which counts its saves.
type gateStore struct {
	memStore
	entered  chan struct{} // closed when the first Save starts
	release  chan struct{} // closed by open
	firstErr error
	once     sync.Once
	opened   sync.Once
	saves    int
}

// newGatedManager returns a manager saving to a new gateStore. The gate
// opens before the manager shuts down, also when a test fails early.
func newGatedManager(t *testing.T) (*Manager, *gateStore) {
	st := &gateStore{entered: make(chan struct{}), release: make(chan struct{})}
	m := newPersistentManager(t, st)
	t.Cleanup(st.open)
	return m, st
}

func (s *gateStore) open() { s.opened.Do(func() { close(s.release) }) }

func (s *gateStore) Save(recs []json.RawMessage) error {
	first := false
	s.once.Do(func() {
		first = true
		close(s.entered)
		<-s.release
	})
	s.mu.Lock()
	s.saves++
	s.mu.Unlock()
	if first && s.firstErr != nil {
		return s.firstErr
	}
	return s.memStore.Save(recs)
}

func (s *gateStore) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.saves
}

func waitFor(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(guard):
		t.Fatalf("still waiting for %s after %v", what, guard)
	}
}

// A save in flight (a slow disk) must not hold the manager: lookups,
// listings and connection accepts go on while it runs.
func TestReadsDoNotWaitOnSave(t *testing.T) {
	m, st := newGatedManager(t)
	created := make(chan error, 1)
	go func() {
		_, err := m.Create(context.Background(), "slow", Spec{Host: "127.0.0.1", Handler: HandlerSpec{Kind: "echo"}})
		created <- err
	}()
	waitFor(t, "the save to start", st.entered)

	read := make(chan struct{})
	var got *Listener
	var listed []Info
	go func() {
		defer close(read)
		got, _ = m.Get("slow")
		listed, _ = m.List()
	}()
	waitFor(t, "Get and List while a save is in flight", read)
	if got == nil || len(listed) != 1 {
		t.Fatalf("while saving: Get %v, List %d listeners; want the bound listener", got, len(listed))
	}
	c := testkit.Dial(t, got.Info().Bound)
	msg := []byte("accepts while saving")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	back := make([]byte, len(msg))
	if _, err := io.ReadFull(c, back); err != nil || string(back) != string(msg) {
		t.Fatalf("echo while saving: %q, %v", back, err)
	}
	c.Close()

	st.open()
	if err := <-created; err != nil {
		t.Fatalf("create: %v", err)
	}
	if n := len(st.saved()); n != 1 {
		t.Fatalf("saved %d records, want 1", n)
	}
}

// Changes made while a save is in flight share the next one.
func TestChangesDuringASaveShareTheNext(t *testing.T) {
	m, st := newGatedManager(t)
	const n = 8
	errs := make(chan error, n+1)
	create := func(i int) {
		_, err := m.Create(context.Background(), fmt.Sprintf("l%d", i), Spec{Host: "127.0.0.1"})
		errs <- err
	}
	go create(0)
	waitFor(t, "the first save to start", st.entered)
	for i := 1; i <= n; i++ {
		go create(i)
	}
	// Every other change is staged before the first save ends.
	testkit.Eventually(t, func() bool { return staged(m) >= n+1 }, fmt.Sprintf("all %d changes to be staged", n+1))
	st.open()
	for range n + 1 {
		if err := <-errs; err != nil {
			t.Fatalf("create: %v", err)
		}
	}
	if got := st.count(); got != 2 {
		t.Fatalf("%d saves for %d changes, want 2 (the one in flight and one for the rest)", got, n+1)
	}
	if got := len(st.saved()); got != n+1 {
		t.Fatalf("saved %d records, want %d", got, n+1)
	}
}

func staged(m *Manager) uint64 {
	m.saver.mu.Lock()
	defer m.saver.mu.Unlock()
	return m.saver.staged
}

// A failed save fails the changes it covered; a later save that succeeds
// covers them again, and the state it writes leaves out what was undone.
func TestSaverFailureThenRecovery(t *testing.T) {
	st := &memStore{fail: errors.New("disk full")}
	m := newPersistentManager(t, st)
	if _, err := m.Create(context.Background(), "x", Spec{}); !errors.Is(err, ErrPersist) {
		t.Fatalf("create on a failing disk: %v, want ErrPersist", err)
	}
	st.mu.Lock()
	st.fail = nil
	st.mu.Unlock()
	if _, err := m.Create(context.Background(), "y", Spec{}); err != nil {
		t.Fatalf("create after the disk healed: %v", err)
	}
	recs := st.saved()
	if len(recs) != 1 {
		t.Fatalf("saved %d records, want only y's", len(recs))
	}
	var r record
	if err := json.Unmarshal(recs[0], &r); err != nil || r.Name != "y" {
		t.Fatalf("saved %s (%v), want listener y", recs[0], err)
	}
}

// A listener is listed while its save is in flight, so it can be closed
// before its create fails. The failed create must leave the close's drain
// alone: one drain, one closed event, and the listener saved as gone.
func TestCloseWhileCreateSaveFails(t *testing.T) {
	m, st := newGatedManager(t)
	st.firstErr = errors.New("disk full")
	created := make(chan error, 1)
	go func() {
		_, err := m.Create(context.Background(), "a", Spec{Host: "127.0.0.1"})
		created <- err
	}()
	waitFor(t, "the save to start", st.entered)
	l, err := m.Get("a")
	if err != nil {
		t.Fatalf("get while saving: %v", err)
	}
	w := newWatch(t, m, l.ID())
	closed := make(chan error, 1)
	go func() {
		_, err := m.Close("a", 0, true)
		closed <- err
	}()
	// The close has staged its snapshot and waits.
	testkit.Eventually(t, func() bool { return staged(m) >= 2 }, "the close to be staged")
	st.open()
	if err := <-created; !errors.Is(err, ErrPersist) {
		t.Fatalf("create: %v, want ErrPersist", err)
	}
	if err := <-closed; err != nil {
		t.Fatalf("close: %v", err)
	}
	m.Shutdown(0) // waits for every drain
	evs := w.until(countAtLeast(events.KindListenerClosed, 1))
	if n := count(evs, events.KindListenerClosed); n != 1 {
		t.Fatalf("%d closed events, want 1", n)
	}
	if recs := st.saved(); len(recs) != 0 {
		t.Fatalf("saved %d records, want none", len(recs))
	}
}

// Once Shutdown has begun no change is taken, and nothing is saved: the
// listeners it closes come back on the next start.
func TestShutdownKeepsSavedState(t *testing.T) {
	st := &memStore{}
	m := newPersistentManager(t, st)
	l, err := m.Create(context.Background(), "kept", Spec{Host: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	m.Shutdown(0)
	if _, err := m.Create(context.Background(), "late", Spec{Host: "127.0.0.1"}); !errors.Is(err, ErrShuttingDown) {
		t.Errorf("create after shutdown: %v, want ErrShuttingDown", err)
	}
	if _, err := m.Close(l.ID(), 0, true); !errors.Is(err, ErrShuttingDown) {
		t.Errorf("close after shutdown: %v, want ErrShuttingDown", err)
	}
	if _, err := m.SetLimits(l.ID(), func(Limits) (Limits, error) { return limit(1), nil }); !errors.Is(err, ErrShuttingDown) {
		t.Errorf("set limits after shutdown: %v, want ErrShuttingDown", err)
	}
	recs := st.saved()
	var r record
	if len(recs) != 1 || json.Unmarshal(recs[0], &r) != nil || r.ID != l.ID() {
		t.Fatalf("saved %s, want listener %s alone", recs, l.ID())
	}
}

// holdStore is a Persister whose next Save, once armed, blocks until hold
// is closed.
type holdStore struct {
	memStore
	armed   atomic.Bool
	entered chan struct{} // closed when the armed Save starts
	hold    chan struct{}
}

func (s *holdStore) Save(recs []json.RawMessage) error {
	if s.armed.CompareAndSwap(true, false) {
		close(s.entered)
		<-s.hold
	}
	return s.memStore.Save(recs)
}

// An update's reply shows the limits it set, even when another update
// lands while its save is in flight.
func TestUpdateReplyShowsItsOwnChange(t *testing.T) {
	st := &holdStore{entered: make(chan struct{}), hold: make(chan struct{})}
	m := newPersistentManager(t, st)
	t.Cleanup(func() {
		select {
		case <-st.hold:
		default:
			close(st.hold)
		}
	})
	l := create(t, m, Spec{Limits: limit(5)})
	st.armed.Store(true)
	type reply struct {
		info Info
		err  error
	}
	set := func(n int64, out chan<- reply) {
		info, err := m.SetLimits(l.ID(), func(Limits) (Limits, error) { return limit(n), nil })
		out <- reply{info, err}
	}
	a, b := make(chan reply, 1), make(chan reply, 1)
	go set(1, a)
	waitFor(t, "the first update's save", st.entered)
	go set(2, b)
	// The second update applied: a state with no signal to wait on.
	testkit.Eventually(t, func() bool { return l.Info().Spec.Limits.MaxConnections == AtMost(2) }, "the second update to apply")
	close(st.hold)
	for want, ch := range map[int64]chan reply{1: a, 2: b} {
		r := <-ch
		if r.err != nil || r.info.Spec.Limits.MaxConnections != AtMost(want) {
			t.Errorf("update to %d replied max_connections %v, %v", want, r.info.Spec.Limits.MaxConnections, r.err)
		}
	}
}
