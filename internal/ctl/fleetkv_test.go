package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/listenerd/listenerd/internal/fleet"
	"github.com/listenerd/listenerd/internal/fleet/natstest"
	"github.com/listenerd/listenerd/internal/testkit"
)

func writeFleetFile(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fleet.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// ctl fleet apply plans against the bucket's desired keys, writes nothing
// on --dry-run, writes the plan, deletes with --prune on the hosts the
// file names only; ctl fleet ls joins the desired keys with their status.
func TestFleetApplyAndLs(t *testing.T) {
	s, err := natstest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer natstest.Stop(s)
	url := s.ClientURL()
	first := writeFleetFile(t, `hosts:
  east:
    listeners:
      web: {spec: {port: 8080, handler: {echo: {}}, limits: {maxConnections: 10}}}
      old: {spec: {port: 8081, handler: {echo: {}}}}
    drainTimeout: 5s
  west:
    listeners:
      api: {spec: {port: 9090, handler: {discard: {}}}, drainTimeout: 1s}
`)
	r := runCtl(t, "/nonexistent", "fleet", "apply", "--nats", url, "-f", first, "--dry-run")
	want := "host east:\n  create old\n  create web\nhost west:\n  create api\n"
	if r.code != ExitOK || r.stdout != want || !strings.Contains(r.stderr, "dry run: nothing was changed") {
		t.Fatalf("dry run: exit %d, stdout %q (want %q), stderr %q", r.code, r.stdout, want, r.stderr)
	}
	r = runCtl(t, "/nonexistent", "fleet", "ls", "--nats", url)
	if r.code != ExitOK || strings.Count(r.stdout, "\n") != 1 {
		t.Fatalf("ls after a dry run: exit %d, %q %q; want the header alone", r.code, r.stdout, r.stderr)
	}

	r = runCtl(t, "/nonexistent", "fleet", "apply", "--nats", url, "-f", first)
	if r.code != ExitOK || r.stdout != want {
		t.Fatalf("apply: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	js := natstest.JetStream(t, url)
	kv, err := js.KeyValue(context.Background(), fleet.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), "desired.west.api")
	if err != nil || !strings.HasPrefix(string(e.Value()), `{"spec":{`) || !strings.Contains(string(e.Value()), `"port":9090`) ||
		!strings.HasSuffix(string(e.Value()), `"drainTimeout":"1s"}`) {
		t.Fatalf("desired.west.api: %s, %v", e.Value(), err)
	}

	// The daemon's report, as it writes it.
	st, _ := json.Marshal(fleet.Status{State: "listening", Address: "127.0.0.1:8080", ID: "ln-1", Revision: 100})
	if _, err := kv.Put(context.Background(), fleet.StatusKey("east", "web"), st); err != nil {
		t.Fatal(err)
	}
	t.Logf("desired.west.api: %s", e.Value())
	r = runCtl(t, "/nonexistent", "fleet", "ls", "--nats", url)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != ExitOK || len(lines) != 4 || strings.Fields(lines[0])[0] != "HOST" ||
		strings.Join(strings.Fields(lines[2]), " ") != "east web listening 127.0.0.1:8080 -" ||
		strings.Join(strings.Fields(lines[3]), " ") != "west api pending - -" {
		t.Fatalf("ls: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	r = runCtl(t, "/nonexistent", "fleet", "ls", "--nats", url, "--host", "west", "-o", "json")
	var doc struct {
		Listeners []lsRow `json:"listeners"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || len(doc.Listeners) != 1 || doc.Listeners[0].Name != "api" ||
		!doc.Listeners[0].Pending || doc.Listeners[0].Status != nil {
		t.Fatalf("ls -o json: %q (%v)", r.stdout, err)
	}

	// A limit changed, a listener gone from the file: updated; deleted
	// only with --prune, and only on the file's hosts.
	second := writeFleetFile(t, `hosts:
  east:
    listeners:
      web: {spec: {port: 8080, handler: {echo: {}}, limits: {maxConnections: 20}}}
    drainTimeout: 5s
`)
	r = runCtl(t, "/nonexistent", "fleet", "apply", "--nats", url, "-f", second)
	if want := "host east:\n  update web: max_connections 10 -> 20\n"; r.code != ExitOK || r.stdout != want {
		t.Fatalf("apply without --prune: exit %d, %q (want %q) %q", r.code, r.stdout, want, r.stderr)
	}
	r = runCtl(t, "/nonexistent", "fleet", "apply", "--nats", url, "-f", second, "--prune", "--dry-run", "-o", "json")
	var plan struct {
		DryRun bool       `json:"dryRun"`
		Hosts  []hostPlan `json:"hosts"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &plan); err != nil || !plan.DryRun || len(plan.Hosts) != 1 ||
		len(plan.Hosts[0].Changes) != 2 || plan.Hosts[0].Changes[0].Action != "delete" || plan.Hosts[0].Changes[0].Key != "desired.east.old" {
		t.Fatalf("prune dry run -o json: %q (%v)", r.stdout, err)
	}
	if _, err := kv.Get(context.Background(), "desired.east.old"); err != nil {
		t.Fatalf("desired.east.old after a dry run: %v", err)
	}
	r = runCtl(t, "/nonexistent", "fleet", "apply", "--nats", url, "-f", second, "--prune")
	if want := "host east:\n  delete old (not in " + second + ")\n  unchanged web\n"; r.code != ExitOK || r.stdout != want {
		t.Fatalf("apply --prune: exit %d, %q (want %q) %q", r.code, r.stdout, want, r.stderr)
	}
	r = runCtl(t, "/nonexistent", "fleet", "ls", "--nats", url, "-o", "json")
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || len(doc.Listeners) != 2 ||
		doc.Listeners[0].Name != "web" || doc.Listeners[1].Host != "west" {
		t.Fatalf("ls after --prune: %q (%v)", r.stdout, err)
	}
}

func TestFleetApplyErrors(t *testing.T) {
	bad := writeFleetFile(t, "hosts:\n  a.b:\n    listeners: {}\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"fleet", "apply", "--nats", "nats://127.0.0.1:4222"}, "-f FILE is required"},
		{[]string{"fleet", "apply", "-f", bad}, "--nats"},
		{[]string{"fleet", "apply", "--nats", "nats://127.0.0.1:4222", "-f", bad}, `host "a.b"`},
		{[]string{"fleet", "apply", "--nats", "nats://127.0.0.1:4222", "-f", bad, "--nats-replicas", "9"}, "--nats-replicas"},
		{[]string{"fleet", "ls", "--nats", "nats://127.0.0.1:4222", "--host", "a.b"}, "--host"},
	} {
		t.Setenv("LISTENERD_NATS", "")
		r := runCtl(t, "/nonexistent", tc.args...)
		if r.code != ExitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want a usage error with %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
}

// A status key whose desired key is deleted (its listener drains) is a
// row of its own, marked deleted, in its place by host and name.
func TestFleetLsListsDrainingDeleted(t *testing.T) {
	s, err := natstest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer natstest.Stop(s)
	url := s.ClientURL()
	kv, err := fleet.OpenBucket(context.Background(), natstest.JetStream(t, url), 1)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	web, _ := json.Marshal(fleet.Status{State: "listening", Address: "127.0.0.1:8080", ID: "ln-1", Revision: 1})
	old, _ := json.Marshal(fleet.Status{State: "draining", Address: "127.0.0.1:8081", ID: "ln-2", Revision: 3})
	// In this order: the desired key is revision 1, which web's status
	// reports as reconciled (a map's order would make it pending at times).
	for _, kv1 := range []struct {
		key string
		v   []byte
	}{
		{fleet.DesiredKey("east", "web"), []byte(`{"spec":{"port":8080,"handler":{"echo":{}}}}`)},
		{fleet.StatusKey("east", "web"), web},
		{fleet.StatusKey("east", "old"), old},
	} {
		if _, err := kv.Put(ctx, kv1.key, kv1.v); err != nil {
			t.Fatal(err)
		}
	}
	r := runCtl(t, "/nonexistent", "fleet", "ls", "--nats", url)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != ExitOK || len(lines) != 3 ||
		strings.Join(strings.Fields(lines[1]), " ") != "east old draining 127.0.0.1:8081 -" ||
		strings.Join(strings.Fields(lines[2]), " ") != "east web listening 127.0.0.1:8080 -" {
		t.Fatalf("ls: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	r = runCtl(t, "/nonexistent", "fleet", "ls", "--nats", url, "-o", "json")
	var doc struct {
		Listeners []lsRow `json:"listeners"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || len(doc.Listeners) != 2 || !doc.Listeners[0].Deleted ||
		doc.Listeners[0].Pending || doc.Listeners[0].Revision != 3 || string(doc.Listeners[0].Desired) != "null" || doc.Listeners[1].Deleted {
		t.Fatalf("ls -o json: %q (%v)", r.stdout, err)
	}
}

// ctl fleet ls shows, for each listener, its host's liveness by the host
// keys: a host whose key is older than three of its intervals is gone, one
// whose last write said so is stopped (in the table's STATE; -o json keeps
// what the daemon reported and adds hostState and hostSeen), one with no
// host key is unknown and shown as before.
func TestFleetLsHostLiveness(t *testing.T) {
	s, err := natstest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer natstest.Stop(s)
	url := s.ClientURL()
	ctx := context.Background()
	kv, err := fleet.OpenBucket(ctx, natstest.JetStream(t, url), 1)
	if err != nil {
		t.Fatal(err)
	}
	put := func(key string, v []byte) jetstream.KeyValueEntry {
		t.Helper()
		rev, err := kv.Put(ctx, key, v)
		if err != nil {
			t.Fatal(err)
		}
		e, err := kv.GetRevision(ctx, key, rev)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	hostKey := func(h fleet.Host) []byte { b, _ := json.Marshal(h); return b }
	for i, host := range []string{"fresh", "old", "down", "legacy"} {
		rev := put(fleet.DesiredKey(host, "web"), []byte(`{"spec":{"port":8080,"handler":{"echo":{}}}}`)).Revision()
		st, _ := json.Marshal(fleet.Status{State: "listening", Address: fmt.Sprintf("127.0.0.1:%d", 8080+i), ID: "ln-" + host, Revision: rev})
		put(fleet.StatusKey(host, "web"), st)
	}
	put(fleet.HostKey("down"), hostKey(fleet.Host{Boot: "b-down", Interval: "1h", Stopped: true}))
	// old's heartbeat is a nanosecond: gone once any later write is three
	// nanoseconds on, by the server's clock. fresh's key is written until
	// it is (ctl never judges at a time before the newest host key write).
	old := put(fleet.HostKey("old"), hostKey(fleet.Host{Boot: "b-old", Interval: "1ns", Version: "v1"}))
	testkit.EventuallyWithin(t, time.Minute, func() bool {
		e := put(fleet.HostKey("fresh"), hostKey(fleet.Host{Boot: "b-fresh", Interval: "1h"}))
		return e.Created().Sub(old.Created()) > 3*time.Nanosecond
	}, "fresh's host key written 3ns after old's")

	r := runCtl(t, "/nonexistent", "fleet", "ls", "--nats", url)
	want := []string{
		"HOST NAME STATE ADDRESS ERROR",
		"down web stopped 127.0.0.1:8082 -",
		"fresh web listening 127.0.0.1:8080 -",
		"legacy web listening 127.0.0.1:8083 -",
		"old web gone 127.0.0.1:8081 -",
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	for i := range lines {
		lines[i] = strings.Join(strings.Fields(lines[i]), " ")
	}
	if r.code != ExitOK || strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("ls: exit %d, %q %q; want\n%s", r.code, r.stdout, r.stderr, strings.Join(want, "\n"))
	}

	r = runCtl(t, "/nonexistent", "fleet", "ls", "--nats", url, "-o", "json")
	var doc struct {
		Listeners []lsRow  `json:"listeners"`
		Hosts     []lsHost `json:"hosts"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || len(doc.Listeners) != 4 || len(doc.Hosts) != 3 {
		t.Fatalf("ls -o json: %q (%v)", r.stdout, err)
	}
	for _, row := range doc.Listeners {
		want := map[string]string{"down": "stopped", "fresh": "up", "legacy": "unknown", "old": "gone"}[row.Host]
		if row.HostState != want || (row.HostSeen == nil) != (row.Host == "legacy") ||
			row.Status == nil || row.Status.State != "listening" || row.Pending {
			t.Errorf("row %+v: hostState %q, want %s, the status as reported and hostSeen unless unknown", row, row.HostState, want)
		}
		if row.Host == "old" && !row.HostSeen.Equal(old.Created()) {
			t.Errorf("old's hostSeen %v, want the write's %v", row.HostSeen, old.Created())
		}
	}
	if h := doc.Hosts[1]; h.Host != "fresh" || h.State != "up" || h.Boot != "b-fresh" || h.Interval != "1h" {
		t.Errorf("hosts[1]: %+v", h)
	}
	if h := doc.Hosts[2]; h.Host != "old" || h.State != "gone" || h.Version != "v1" || !h.Seen.Equal(old.Created()) {
		t.Errorf("hosts[2]: %+v", h)
	}
	r = runCtl(t, "/nonexistent", "fleet", "ls", "--nats", url, "--host", "down", "-o", "json")
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || len(doc.Listeners) != 1 || len(doc.Hosts) != 1 ||
		doc.Hosts[0].State != "stopped" || !doc.Hosts[0].Stopped {
		t.Fatalf("ls --host down -o json: %q (%v)", r.stdout, err)
	}
}

// Liveness is judged at the time given: up to three intervals after the
// host key's write, up; past, gone.
func TestFleetRowsLivenessAtATime(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	hb, _ := json.Marshal(fleet.Host{Boot: "b", Interval: "10s"})
	st, _ := json.Marshal(fleet.Status{State: "listening", Revision: 1})
	keys := map[string]bucketKey{
		fleet.DesiredKey("east", "web"): {value: []byte(`{}`), revision: 1, created: at},
		fleet.StatusKey("east", "web"):  {value: st, revision: 2, created: at},
		fleet.HostKey("east"):           {value: hb, revision: 3, created: at},
	}
	for _, tc := range []struct {
		now  time.Time
		want string
	}{{at, "up"}, {at.Add(30 * time.Second), "up"}, {at.Add(31 * time.Second), "gone"}} {
		rows, hosts := fleetRows(keys, "", tc.now)
		if len(rows) != 1 || rows[0].HostState != tc.want || len(hosts) != 1 || hosts[0].State != tc.want {
			t.Errorf("at write+%v: rows %+v hosts %+v, want %s", tc.now.Sub(at), rows, hosts, tc.want)
		}
	}
	// ctl's clock behind the server's: never judged before the newest
	// host key write.
	ahead := time.Now().Add(24 * time.Hour)
	if now := lsNow(context.Background(), nil, map[string]bucketKey{fleet.HostKey("east"): {value: hb, created: ahead}}); !now.Equal(ahead) {
		t.Errorf("lsNow with a host key written after ctl's now: %v", now)
	}
}
