package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/fleet"
	"github.com/listenerd/listenerd/internal/fleet/natstest"
)

// bucketClient is the test's own connection to the fleet's bucket.
type bucketClient struct {
	t      testing.TB
	kv     jetstream.KeyValue
	w      jetstream.KeyWatcher
	latest map[string]*fleet.Status // status key -> its last value; nil: deleted
}

func openBucket(t testing.TB, url string) *bucketClient {
	t.Helper()
	kv, err := fleet.OpenBucket(testContext(t), natstest.JetStream(t, url), 1)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.Watch(context.Background(), fleet.HostKeys(fleet.StatusPrefix, "*"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop() })
	return &bucketClient{t: t, kv: kv, w: w, latest: map[string]*fleet.Status{}}
}

// put writes a desired listener of host and returns its revision.
func (b *bucketClient) put(host, name, value string) uint64 {
	b.t.Helper()
	rev, err := b.kv.Put(testContext(b.t), fleet.DesiredKey(host, name), []byte(value))
	if err != nil {
		b.t.Fatal(err)
	}
	return rev
}

// status waits until host's listener name has a status for which ok
// holds (st nil: none), reading the status keys' watch.
func (b *bucketClient) status(host, name string, ok func(st *fleet.Status) bool) *fleet.Status {
	b.t.Helper()
	key := fleet.StatusKey(host, name)
	ctx := testContext(b.t)
	for {
		if st, seen := b.latest[key]; seen && ok(st) {
			return st
		}
		select {
		case e, open := <-b.w.Updates():
			if !open {
				b.t.Fatal("status watch ended")
			}
			if e == nil {
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				b.latest[e.Key()] = nil
				continue
			}
			var st fleet.Status
			if err := json.Unmarshal(e.Value(), &st); err != nil {
				b.t.Fatalf("%s: %v", e.Key(), err)
			}
			b.latest[e.Key()] = &st
		case <-ctx.Done():
			b.t.Fatalf("%s: no such status (last %+v)", key, b.latest[key])
		}
	}
}

// reconciledAt waits for the status of host's name to say revision rev
// was reconciled into a listening listener.
func (b *bucketClient) reconciledAt(host, name string, rev uint64) *fleet.Status {
	b.t.Helper()
	return b.status(host, name, func(st *fleet.Status) bool {
		return st != nil && st.Revision >= rev && st.State == "listening"
	})
}

func fleetDaemon(t testing.TB, url, host string, stateDir string) *testDaemon {
	return startRun(t, Config{Ephemeral: stateDir == "", StateDir: stateDir, History: 1000, ShutdownTimeout: guard,
		ListenersResync: 200 * time.Millisecond, // retries a failed create without a change
		Fleet:           FleetConfig{ConnConfig: fleet.ConnConfig{URL: url}, Host: host, Replicas: 1, Desired: true, Heartbeat: fleet.DefaultHeartbeat}})
}

// names lists the open listeners of d by name.
func names(t *testing.T, d *testDaemon) []string {
	t.Helper()
	resp, err := d.unix.ListListeners(testContext(t), &listenerdv1.ListListenersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range resp.GetListeners() {
		if l.GetStatus().GetState() == listenerdv1.State_STATE_LISTENING {
			out = append(out, l.GetName())
		}
	}
	return out
}

const echoEntry = `{"spec": {"host": "127.0.0.1", "port": %d, "handler": {"echo": {}}, "limits": {"maxConnections": %d}}}`

// Two daemons of one NATS: each makes its own host's desired keys true,
// reports their status, updates in place, and closes a listener whose key
// is deleted.
func TestDesiredListenersFromTheBucket(t *testing.T) {
	s, err := natstest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natstest.Stop(s) })
	b := openBucket(t, s.ClientURL())
	east := fleetDaemon(t, s.ClientURL(), "east", "")
	west := fleetDaemon(t, s.ClientURL(), "west", "")
	ev := watchAll(t, east.unix)

	rev := b.put("east", "web", fmt.Sprintf(echoEntry, 0, 10))
	b.put("west", "api", fmt.Sprintf(echoEntry, 0, 10))
	web := b.reconciledAt("east", "web", rev)
	api := b.reconciledAt("west", "api", 1)
	echoes(t, web.Address)
	echoes(t, api.Address)
	if got := names(t, east); strings.Join(got, ",") != "web" {
		t.Errorf("east listens as %v, want web only", got)
	}
	if got := names(t, west); strings.Join(got, ",") != "api" {
		t.Errorf("west listens as %v, want api only", got)
	}
	e := ev.expect("create", "web", "")
	if src := e.GetListenerReconciled().GetSource(); src != "nats bucket LISTENERD_FLEET" || e.GetListenerId() != web.ID {
		t.Fatalf("reconciled event %v, want source nats bucket LISTENERD_FLEET and id %s", e, web.ID)
	}

	// A limit changed in the bucket: in place, same id.
	rev = b.put("east", "web", fmt.Sprintf(echoEntry, 0, 20))
	updated := b.reconciledAt("east", "web", rev)
	if updated.ID != web.ID {
		t.Fatalf("web after the update: id %s, was %s", updated.ID, web.ID)
	}
	ev.expect("update", "web", "max_connections 10 -> 20")
	if l := getListener(t, east.unix, web.ID); l.GetSpec().GetLimits().GetMaxConnections() != 20 {
		t.Fatalf("web's limits: %v", l.GetSpec().GetLimits())
	}

	// A value that does not read: the listener stays, the status says why.
	rev = b.put("east", "web", `{"spec": {"port": "x"}}`)
	bad := b.status("east", "web", func(st *fleet.Status) bool { return st != nil && st.Revision >= rev })
	if bad.State != "listening" || !strings.Contains(bad.Error, "desired.east.web") || bad.ID != web.ID {
		t.Fatalf("status of a bad value: %+v", bad)
	}
	ev.expect("failed", "", "invalid value for uint32 field port")

	// A create that fails: the status says so, and a resync tries again.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	busyPort := taken.Addr().(*net.TCPAddr).Port
	rev = b.put("west", "busy", fmt.Sprintf(echoEntry, busyPort, 10))
	busy := b.status("west", "busy", func(st *fleet.Status) bool { return st != nil && st.Revision >= rev })
	if busy.State != "missing" || busy.ID != "" || !strings.Contains(busy.Error, "in use") {
		t.Fatalf("status of a create that failed: %+v", busy)
	}
	taken.Close()
	if st := b.reconciledAt("west", "busy", rev); st.Error != "" || st.Address != taken.Addr().String() {
		t.Fatalf("busy once free: %+v", st)
	}

	// The key deleted: the listener closes; its status says it drains
	// (the test's connections are open, for the default 30 s) and goes
	// once its connections are gone.
	if err := b.kv.Delete(testContext(t), fleet.DesiredKey("east", "web")); err != nil {
		t.Fatal(err)
	}
	draining := b.status("east", "web", func(st *fleet.Status) bool { return st != nil && st.State == "draining" })
	if draining.ID != web.ID || draining.Revision <= rev {
		t.Fatalf("status of the deleted key's listener: %+v, want web %s draining at the deletion's revision", draining, web.ID)
	}
	ev.expect("close", "web", "nats bucket")
	conns, err := east.unix.ListConnections(testContext(t), &listenerdv1.ListConnectionsRequest{ListenerId: web.ID})
	if err != nil || len(conns.GetConnections()) == 0 {
		t.Fatalf("web's connections: %v, %v", conns, err)
	}
	for _, c := range conns.GetConnections() {
		if _, err := east.unix.CloseConnection(testContext(t), &listenerdv1.CloseConnectionRequest{Id: c.GetId()}); err != nil {
			t.Fatal(err)
		}
	}
	b.status("east", "web", func(st *fleet.Status) bool { return st == nil })
	if got := names(t, east); len(got) != 0 {
		t.Fatalf("east still listens as %v", got)
	}
	if got := names(t, west); strings.Join(got, ",") != "api,busy" {
		t.Errorf("west listens as %v, want api and busy", got)
	}
}

// A daemon started while NATS is down serves the desired listeners it
// saved, and catches up with the bucket once NATS is back.
func TestDesiredListenersNATSDownAtStart(t *testing.T) {
	store := t.TempDir()
	stateDir := filepath.Join(t.TempDir(), "state")
	front, err := natstest.NewFront()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(front.Close)
	s, err := natstest.Start(store)
	if err != nil {
		t.Fatal(err)
	}
	front.Point(s.Addr().String())
	port := freePort(t)
	var id string
	t.Run("first", func(t *testing.T) { // its cleanup stops the daemon
		b := openBucket(t, s.ClientURL())
		fleetDaemon(t, front.URL(), "h", stateDir)
		rev := b.put("h", "web", fmt.Sprintf(echoEntry, port, 10))
		id = b.reconciledAt("h", "web", rev).ID
	})
	natstest.Stop(s)
	front.Point("")

	var again *natsserver.Server
	t.Cleanup(func() { // after the daemon's: its last events flush to it
		if again != nil {
			natstest.Stop(again)
		}
	})
	d := fleetDaemon(t, front.URL(), "h", stateDir)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	echoes(t, addr)
	if l := getListener(t, d.unix, id); !l.GetStatus().GetDeclared() {
		t.Fatalf("restored web: %v", l)
	}
	ev := watchAll(t, d.unix)

	if again, err = natstest.Start(store); err != nil {
		t.Fatal(err)
	}
	front.Point(again.Addr().String())
	b := openBucket(t, again.ClientURL())
	rev := b.put("h", "web", fmt.Sprintf(echoEntry, port, 30))
	ev.expect("update", "web", "max_connections 10 -> 30")
	if st := b.reconciledAt("h", "web", rev); st.ID != id {
		t.Fatalf("web caught up as %+v, want id %s", st, id)
	}
	echoes(t, addr)
}

func TestDesiredWithListenersFileRefused(t *testing.T) {
	cfg := Config{Listeners: "l.yaml", Fleet: FleetConfig{ConnConfig: fleet.ConnConfig{URL: "nats://127.0.0.1:4222"}, Host: "h", Replicas: 1, Desired: true, Heartbeat: fleet.DefaultHeartbeat}}
	if err := cfg.checkDeclaredSource(); err == nil || !strings.Contains(err.Error(), "--listeners and --nats") || !strings.Contains(err.Error(), "--nats-desired=false") {
		t.Fatalf("check: %v", err)
	}
	cfg.Fleet.Desired = false
	if err := cfg.checkDeclaredSource(); err != nil {
		t.Fatalf("check with --nats-desired=false: %v", err)
	}
}

// BenchmarkDesiredReconcile200: 200 desired keys put for a host, until
// the daemon reports all 200 listening (and, untimed, deleted again).
func BenchmarkDesiredReconcile200(b *testing.B) {
	s, err := natstest.Start(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { natstest.Stop(s) })
	bc := openBucket(b, s.ClientURL())
	fleetDaemon(b, s.ClientURL(), "bench", "")
	const n = 200
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		revs := make([]uint64, n)
		for j := range n {
			revs[j] = bc.put("bench", fmt.Sprintf("l%d-%d", i, j), fmt.Sprintf(echoEntry, 0, 10))
		}
		for j := range n {
			bc.reconciledAt("bench", fmt.Sprintf("l%d-%d", i, j), revs[j])
		}
		b.Logf("round %d: %d keys put to all listening in %v", i, n, time.Since(start))
		b.StopTimer()
		for j := range n {
			if err := bc.kv.Delete(testContext(b), fleet.DesiredKey("bench", fmt.Sprintf("l%d-%d", i, j))); err != nil {
				b.Fatal(err)
			}
		}
		for j := range n {
			bc.status("bench", fmt.Sprintf("l%d-%d", i, j), func(st *fleet.Status) bool { return st == nil })
		}
		b.StartTimer()
	}
}
