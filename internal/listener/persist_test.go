package listener

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/testkit"
)

// memStore is a Persister that keeps the last save in memory.
type memStore struct {
	mu   sync.Mutex
	recs []json.RawMessage
	fail error
}

func (s *memStore) Save(recs []json.RawMessage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	s.recs = append([]json.RawMessage(nil), recs...)
	return nil
}

func (s *memStore) saved() []json.RawMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recs
}

func newPersistentManager(t *testing.T, st Persister) *Manager {
	t.Helper()
	m := NewManager(events.NewBus(events.Options{}), nil, Options{Persister: st})
	t.Cleanup(func() { m.Shutdown(0) })
	return m
}

func TestRestoreSameIDsAndPorts(t *testing.T) {
	st := &memStore{}
	m1 := newPersistentManager(t, st)
	fixed, err := m1.Create(context.Background(), "fixed", Spec{Limits: limit(3), Handler: HandlerSpec{Kind: "echo"}})
	if err != nil {
		t.Fatal(err)
	}
	eph := create(t, m1, Spec{}) // port 0
	gone := create(t, m1, Spec{})
	if _, err := m1.Close(gone.ID(), 0, true); err != nil {
		t.Fatal(err)
	}
	if _, err := m1.SetLimits("fixed", func(l Limits) (Limits, error) { l.MaxConnections = AtMost(7); return l, nil }); err != nil {
		t.Fatal(err)
	}
	if n := len(st.saved()); n != 2 {
		t.Fatalf("saved %d records, want 2 (closed one removed)", n)
	}
	want := map[string]string{fixed.ID(): fixed.Info().Bound, eph.ID(): eph.Info().Bound}
	m1.Shutdown(0) // the daemon stopping: state stays

	m2 := newPersistentManager(t, st)
	up, failed, err := m2.Restore(context.Background(), st.saved())
	if err != nil || up != 2 || failed != 0 {
		t.Fatalf("restore: %d up, %d failed, %v", up, failed, err)
	}
	infos, _ := m2.List()
	for _, in := range infos {
		if want[in.ID] != in.Bound || in.State != StateListening {
			t.Fatalf("restored %s at %s (%v), want %s", in.ID, in.Bound, in.State, want[in.ID])
		}
	}
	l, err := m2.Get("fixed")
	if err != nil || l.Info().Spec.Limits.MaxConnections != AtMost(7) || l.Info().Spec.Handler.Kind != "echo" {
		t.Fatalf("restored spec: %+v, %v", l.Info().Spec, err)
	}
}

func TestRestoreUnbindableComesBackFailed(t *testing.T) {
	st := &memStore{}
	m1 := newPersistentManager(t, st)
	l := create(t, m1, Spec{})
	port := localPortOf(l)
	m1.Shutdown(0)

	// Someone else takes the port while the daemon is down.
	squatter, err := net.Listen("tcp", l.Info().Bound)
	if err != nil {
		t.Fatal(err)
	}
	// Make the record ask for that fixed port.
	var r record
	if err := json.Unmarshal(st.saved()[0], &r); err != nil {
		t.Fatal(err)
	}
	r.Spec.Port = port
	raw, _ := json.Marshal(r)

	m2 := newPersistentManager(t, st)
	up, failed, err := m2.Restore(context.Background(), []json.RawMessage{raw})
	if err != nil || up != 0 || failed != 1 {
		t.Fatalf("restore: %d up, %d failed, %v", up, failed, err)
	}
	got, err := m2.Get(l.ID())
	if err != nil {
		t.Fatalf("failed listener dropped: %v", err)
	}
	if in := got.Info(); in.State != StateFailed || in.LastError == "" {
		t.Fatalf("restored %+v, want FAILED with its error", in)
	}
	if len(st.saved()) != 1 {
		t.Fatal("a FAILED listener must stay in the saved state")
	}
	if _, err := m2.Rebind(context.Background(), l.ID()); !errors.Is(err, ErrAddressInUse) {
		t.Fatalf("rebind while taken: %v", err)
	}
	squatter.Close()
	back, err := m2.Rebind(context.Background(), l.ID())
	if err != nil {
		t.Fatal(err)
	}
	if in := back.Info(); in.State != StateListening || localPortOf(back) != port {
		t.Fatalf("rebound %+v", in)
	}
	c := testkit.Dial(t, back.Info().Bound)
	c.Close()
	if _, err := m2.Rebind(context.Background(), l.ID()); !errors.Is(err, ErrNotFailed) {
		t.Fatalf("rebind of a listening listener: %v", err)
	}
}

func TestCreateFailsWholeWhenStateCannotBeSaved(t *testing.T) {
	st := &memStore{fail: errors.New("disk full")}
	m := newPersistentManager(t, st)
	_, err := m.Create(context.Background(), "x", Spec{})
	if !errors.Is(err, ErrPersist) {
		t.Fatalf("create: %v, want ErrPersist", err)
	}
	if ls, _ := m.List(); len(ls) != 0 {
		t.Fatalf("a listener was left behind: %+v", ls)
	}
	if _, err := m.Get("x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("name left behind: %v", err)
	}
}

func TestValidateRecordsRejectsGarbage(t *testing.T) {
	for _, raw := range []string{
		`{"id":"nope","spec":{"handler":"echo","max_connections":-1}}`,
		`{"id":"ln-00000001","spec":{"handler":"teleport","max_connections":-1}}`,
		`{"id":"ln-00000001","spec":{"handler":"echo","max_connections":-1},"extra":1}`,
		`{"id":"ln-00000001","name":"Bad Name","spec":{"handler":"echo","max_connections":-1}}`,
		`[]`,
	} {
		if err := validateV1(raw); err == nil {
			t.Errorf("accepted %s", raw)
		}
	}
	dup := `{"id":"ln-00000001","spec":{"handler":"echo","max_connections":-1}}`
	if err := validateV1(dup, dup); err == nil {
		t.Error("accepted a duplicate id")
	}
	// The current format's own garbage.
	for _, raw := range []string{
		`{"id":"ln-00000001","spec":{"handler":"echo","max_connections":-1}}`,
		`{"id":"ln-00000001","spec":{"handler":"echo","overflow":"spill"}}`,
		`{"id":"ln-00000001","spec":{"handler":"echo","overflow_backlog":true}}`,
		`{"id":"ln-00000001","spec":{}}`,
	} {
		if err := ValidateRecords([]json.RawMessage{json.RawMessage(raw)}); err == nil {
			t.Errorf("accepted %s", raw)
		}
	}
}

// validateV1 checks records of the first format as a daemon reading such
// a state file does: upgraded, then validated.
func validateV1(raws ...string) error {
	rs := make([]json.RawMessage, len(raws))
	for i, r := range raws {
		rs[i] = json.RawMessage(r)
	}
	up, err := UpgradeRecords(1, rs)
	if err != nil {
		return err
	}
	return ValidateRecords(up)
}

// A record saved by an older version, whose spec a stricter check now
// refuses, comes back FAILED with the reason rather than stopping the
// daemon; rebinding it is refused for the same reason.
func TestRestoreRefusedSpecComesBackFailed(t *testing.T) {
	raws := []json.RawMessage{
		json.RawMessage(`{"id":"ln-00000001","name":"old","spec":{"host":"127.0.0.1","handler":"forward","upstream":"127.0.0.1:99999","max_connections":-1}}`),
		json.RawMessage(`{"id":"ln-00000002","spec":{"host":"127.0.0.1","handler":"echo","max_connections":-1}}`),
		// A host that does not resolve either: the spec is the reason given.
		json.RawMessage(`{"id":"ln-00000003","name":"older","spec":{"host":"no such host!","handler":"forward","upstream":":80","max_connections":-1}}`),
	}
	raws, err := UpgradeRecords(1, raws)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	if err := ValidateRecords(raws); err != nil {
		t.Fatalf("a refused spec is not a corrupt file: %v", err)
	}
	st := &memStore{}
	m := newPersistentManager(t, st)
	up, failed, err := m.Restore(context.Background(), raws)
	if err != nil || up != 1 || failed != 2 {
		t.Fatalf("restore: %d up, %d failed, %v", up, failed, err)
	}
	l, err := m.Get("old")
	if err != nil {
		t.Fatal(err)
	}
	in := l.Info()
	if in.State != StateFailed || !strings.Contains(in.LastError, "spec.handler.forward.upstream") {
		t.Fatalf("restored %v with %q, want FAILED naming the upstream", in.State, in.LastError)
	}
	if len(st.saved()) != 3 {
		t.Fatalf("saved %d records, want all kept", len(st.saved()))
	}
	for _, ref := range []string{"old", "older"} {
		_, err = m.Rebind(context.Background(), ref)
		var fe *FieldError
		if !errors.Is(err, ErrInvalid) || !errors.As(err, &fe) || fe.Field != "spec.handler.forward.upstream" {
			t.Fatalf("rebind %s: %v, want ErrInvalid naming the upstream", ref, err)
		}
	}
	if _, err := m.Close("old", 0, true); err != nil {
		t.Fatalf("close: %v", err)
	}
}
