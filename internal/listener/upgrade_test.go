package listener

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/listenerd/listenerd/internal/state"
)

// testdata/state-v1.json was written by listenerd at bc376a0 (state
// format 1, before QUEUE) with ctl listen: an unlimited discard, an echo
// with every limit set, a BACKLOG listener with its socket options, a
// forward with max_connections 0, and a forward to a service name. After
// the upgrade every listener comes back with the limits and handler it
// had, and is saved in the current format, which loads to the same.
func TestStateVersion1Loads(t *testing.T) {
	data, err := os.ReadFile("testdata/state-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	raws, version, err := state.Decode("state-v1.json", data)
	if err != nil || version != 1 || len(raws) != 5 {
		t.Fatalf("decode: %d records of version %d, %v", len(raws), version, err)
	}
	raws, err = UpgradeRecords(version, raws)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	st := &memStore{}
	m := newPersistentManager(t, st)
	up, failed, err := m.Restore(context.Background(), raws)
	if err != nil || up != 5 || failed != 0 {
		t.Fatalf("restore: %d up, %d failed, %v", up, failed, err)
	}
	want := map[string]Spec{
		"plain": {Handler: HandlerSpec{Kind: "discard"}},
		"capped": {Handler: HandlerSpec{Kind: "echo"}, AllowHalfOpen: true,
			Limits: Limits{MaxConnections: AtMost(5), IdleTimeout: 30 * time.Second, MaxLifetime: time.Hour,
				AcceptRate: 50, AcceptBurst: 10, PerSource: 3},
			Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, Deny: []netip.Prefix{netip.MustParsePrefix("127.0.0.9/32")}},
		"waiting": {Handler: HandlerSpec{Kind: "discard"}, Backlog: 64, PauseOnConnect: true, Nagle: true, KeepAlive: -1,
			Limits: Limits{MaxConnections: AtMost(2), Overflow: OverflowBacklog}},
		"fwd":  {Handler: ForwardTo("127.0.0.1:9", 0), Limits: Limits{MaxConnections: AtMost(0)}},
		"fwd2": {Handler: ForwardTo("localhost:http", 0)},
	}
	check := func(m *Manager) {
		t.Helper()
		for name, w := range want {
			l, err := m.Get(name)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			got := l.Info().Spec
			if !reflect.DeepEqual(got, w) {
				t.Errorf("%s restored as\n%+v\nwant\n%+v", name, got, w)
			}
		}
	}
	check(m)
	// Saved again, in the current format: a second start reads the same.
	saved := st.saved()
	for _, raw := range saved {
		var r struct {
			Spec map[string]json.RawMessage `json:"spec"`
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatal(err)
		}
		for _, old := range []string{"overflow_backlog", "upstream", "connect_timeout_ns"} {
			if _, ok := r.Spec[old]; ok {
				t.Errorf("saved %s with the old field %q", raw, old)
			}
		}
	}
	m.Shutdown(0)
	if err := ValidateRecords(saved); err != nil {
		t.Fatalf("the upgraded records do not validate: %v", err)
	}
	m2 := newPersistentManager(t, &memStore{})
	if up, failed, err := m2.Restore(context.Background(), saved); err != nil || up != 5 || failed != 0 {
		t.Fatalf("second restore: %d up, %d failed, %v", up, failed, err)
	}
	check(m2)
}
