package fleet_test

import (
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/listenerd/listenerd/internal/fleet"
	"github.com/listenerd/listenerd/internal/fleet/natstest"
)

// hostWatch is the test's own watch of one host key: every value it
// takes, in order.
type hostWatch struct {
	t    *testing.T
	kv   jetstream.KeyValue
	w    jetstream.KeyWatcher
	seen []jetstream.KeyValueEntry
}

func watchHost(t *testing.T, url, host string) *hostWatch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	kv, err := fleet.OpenBucket(ctx, natstest.JetStream(t, url), 1)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.Watch(context.Background(), fleet.HostKey(host))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop() })
	return &hostWatch{t: t, kv: kv, w: w}
}

// until reads the watch until ok holds of the values seen, and returns
// the latest, decoded.
func (h *hostWatch) until(what string, ok func(seen []jetstream.KeyValueEntry) bool) fleet.Host {
	h.t.Helper()
	timer := time.NewTimer(guard)
	defer timer.Stop()
	for !ok(h.seen) {
		select {
		case e := <-h.w.Updates():
			if e != nil {
				h.seen = append(h.seen, e)
			}
		case <-timer.C:
			h.t.Fatalf("%s: not after %v; %d values seen", what, guard, len(h.seen))
		}
	}
	return h.decode(h.seen[len(h.seen)-1])
}

func (h *hostWatch) decode(e jetstream.KeyValueEntry) fleet.Host {
	h.t.Helper()
	var v fleet.Host
	if e.Operation() != jetstream.KeyValuePut {
		h.t.Fatalf("%s revision %d: %v", e.Key(), e.Revision(), e.Operation())
	}
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		h.t.Fatalf("%s: %q: %v", e.Key(), e.Value(), err)
	}
	return v
}

// The host key is written when the Desired starts, again at each
// heartbeat (counted, not timed), and once more, stopped, when it ends.
func TestHostKeyHeartbeatThenStopped(t *testing.T) {
	url := soloNATS(t)
	hw := watchHost(t, url, "h")
	r := newDesiredRigWith(t, url, "h", func(d *fleet.Desired) {
		d.Heartbeat, d.Boot, d.Version = 20*time.Millisecond, "boot-1", "v-test"
	})
	first := hw.until("the host key written", func(seen []jetstream.KeyValueEntry) bool { return len(seen) >= 1 })
	if first.Boot != "boot-1" || first.Interval != "20ms" || first.Version != "v-test" || first.PID != os.Getpid() || first.Stopped || first.Updated.IsZero() {
		t.Fatalf("the host key at start: %+v", first)
	}
	if _, state := fleet.Liveness(hw.seen[0].Value(), hw.seen[0].Created(), hw.seen[0].Created()); state != fleet.HostUp {
		t.Fatalf("liveness at the write's own time: %s, want up", state)
	}
	hw.until("three heartbeats after the first write", func(seen []jetstream.KeyValueEntry) bool { return len(seen) >= 4 })
	for i, e := range hw.seen {
		if v := hw.decode(e); v.Boot != "boot-1" || v.Stopped {
			t.Fatalf("value %d: %+v", i, v)
		}
		if i > 0 && e.Revision() <= hw.seen[i-1].Revision() {
			t.Fatalf("revisions %d then %d", hw.seen[i-1].Revision(), e.Revision())
		}
	}

	r.stop()
	last := hw.until("the host key stopped", func(seen []jetstream.KeyValueEntry) bool {
		return hw.decode(seen[len(seen)-1]).Stopped
	})
	if last.Boot != "boot-1" || last.Interval != "20ms" {
		t.Fatalf("the host key at shutdown: %+v", last)
	}
	e, err := hw.kv.Get(context.Background(), fleet.HostKey("h"))
	if err != nil || e.Revision() != hw.seen[len(hw.seen)-1].Revision() {
		t.Fatalf("the host key after the shutdown: %v (%v), want the stopped write last", e, err)
	}
	if _, state := fleet.Liveness(e.Value(), e.Created(), e.Created().Add(time.Hour)); state != fleet.HostStopped {
		t.Fatalf("liveness of the stopped key an hour on: %s, want stopped", state)
	}
}

// A shutdown marks the host key stopped only over its own last write: a
// daemon that wrote it since (an upgrade's new process) keeps its value.
func TestHostKeyStoppedNotOverAnotherWrite(t *testing.T) {
	url := soloNATS(t)
	hw := watchHost(t, url, "h")
	r := newDesiredRigWith(t, url, "h", func(d *fleet.Desired) { d.Heartbeat, d.Boot = time.Hour, "old" })
	hw.until("the host key written", func(seen []jetstream.KeyValueEntry) bool { return len(seen) >= 1 })
	next, _ := json.Marshal(fleet.Host{Boot: "old", PID: os.Getpid() + 1, Interval: "10s", Version: "next"})
	rev, err := hw.kv.Put(context.Background(), fleet.HostKey("h"), next)
	if err != nil {
		t.Fatal(err)
	}
	r.stop()
	e, err := hw.kv.Get(context.Background(), fleet.HostKey("h"))
	if err != nil || e.Revision() != rev || string(e.Value()) != string(next) {
		t.Fatalf("the host key after the old process stopped: %v (%v), want the new one's write, revision %d", e, err, rev)
	}
}

func TestLiveness(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	val := func(h fleet.Host) []byte { b, _ := json.Marshal(h); return b }
	for _, tc := range []struct {
		value []byte
		now   time.Time
		want  string
	}{
		{val(fleet.Host{Interval: "10s"}), at, fleet.HostUp},
		{val(fleet.Host{Interval: "10s"}), at.Add(30 * time.Second), fleet.HostUp},
		{val(fleet.Host{Interval: "10s"}), at.Add(30*time.Second + 1), fleet.HostGone},
		{val(fleet.Host{Interval: "10s"}), at.Add(-time.Hour), fleet.HostUp}, // written "after" now: a clock behind
		{val(fleet.Host{Interval: "10s", Stopped: true}), at.Add(time.Hour), fleet.HostStopped},
		{val(fleet.Host{Interval: "10s", Stopped: true}), at, fleet.HostStopped},
		{val(fleet.Host{Interval: "0s"}), at, fleet.HostUnknown},
		{val(fleet.Host{Interval: "often"}), at, fleet.HostUnknown},
		{val(fleet.Host{}), at, fleet.HostUnknown},
		{[]byte("not json"), at, fleet.HostUnknown},
	} {
		if _, got := fleet.Liveness(tc.value, at, tc.now); got != tc.want {
			t.Errorf("%s at %v: %s, want %s", tc.value, tc.now.Sub(at), got, tc.want)
		}
	}
	if _, _, _, ok := fleet.SplitKey(fleet.HostKey("h")); ok {
		t.Errorf("SplitKey(%q) reads it as a desired or status key", fleet.HostKey("h"))
	}
}
