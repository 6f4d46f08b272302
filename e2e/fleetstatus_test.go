package e2e

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/listenerd/listenerd/internal/fleet"
	"github.com/listenerd/listenerd/internal/fleet/natstest"
	"github.com/listenerd/listenerd/internal/testkit"
)

// fleetLsRow is one row of ctl fleet ls -o json.
type fleetLsRow struct {
	Host    string        `json:"host"`
	Name    string        `json:"name"`
	Status  *fleet.Status `json:"status"`
	Pending bool          `json:"pending"`
	Deleted bool          `json:"deleted"`
	// HostState is the liveness of the host's daemon: up, gone, stopped,
	// unknown.
	HostState string `json:"hostState"`
}

// fleetLs runs ctl fleet ls -o json and returns its rows by name.
func fleetLs(t *testing.T, d *daemon, url string) map[string]fleetLsRow {
	t.Helper()
	var doc struct {
		Listeners []fleetLsRow `json:"listeners"`
	}
	out := d.mustCtl("fleet", "ls", "--nats", url, "-o", "json")
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("fleet ls -o json: %q: %v", out, err)
	}
	rows := map[string]fleetLsRow{}
	for _, r := range doc.Listeners {
		rows[r.Name] = r
	}
	return rows
}

// A real daemon's statuses in ctl fleet ls follow its listener between
// reconciles: closed through the API with a connection open, it is
// draining, then missing once closed; its desired key deleted (ctl fleet
// apply --prune), it is listed draining, marked deleted, until it is
// closed, then no more.
func TestFleetLsFollowsTheListener(t *testing.T) {
	s, err := natstest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natstest.Stop(s) }) // after the daemon, which flushes to it
	url := s.ClientURL()
	// No resync: a listener closed through the API stays closed.
	d := startDaemon(t, "--nats", url, "--host-name", "h1", "--listeners-resync", "0")
	dir := t.TempDir()
	write := func(name, text string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	one := write("one.yaml", "hosts:\n  h1:\n    listeners:\n      web: {spec: {port: 0, handler: {echo: {}}}}\n      api: {spec: {port: 0, handler: {echo: {}}}}\n")
	d.mustCtl("fleet", "apply", "--nats", url, "-f", one)
	var rows map[string]fleetLsRow
	eventually(t, func() bool {
		rows = fleetLs(t, d, url)
		up := func(r fleetLsRow) bool { return r.Status != nil && !r.Pending && r.Status.State == "listening" }
		return up(rows["web"]) && up(rows["api"])
	}, "web and api listening in fleet ls")
	web, api := *rows["web"].Status, *rows["api"].Status

	// api closed through the API, a connection open: draining, then
	// missing.
	c := dial(t, api.Address)
	echoOnce(t, c)
	d.mustCtl("close", api.ID, "--drain", "1h")
	eventually(t, func() bool {
		st := fleetLs(t, d, url)["api"].Status
		return st != nil && st.State == "draining" && st.ID == api.ID
	}, "api draining in fleet ls")
	c.Close()
	eventually(t, func() bool {
		st := fleetLs(t, d, url)["api"].Status
		return st != nil && st.State == "missing" && st.ID == ""
	}, "api missing in fleet ls")

	// web's key deleted, a connection open: draining for the default 30 s
	// (the connection ends it first), marked deleted; then gone.
	c = dial(t, web.Address)
	echoOnce(t, c)
	none := write("none.yaml", "hosts:\n  h1:\n    listeners: {}\n")
	d.mustCtl("fleet", "apply", "--nats", url, "-f", none, "--prune")
	eventually(t, func() bool {
		r, ok := fleetLs(t, d, url)["web"]
		return ok && r.Deleted && r.Status.State == "draining" && r.Status.ID == web.ID
	}, "web draining, its key deleted, in fleet ls")
	if ls := d.mustCtl("fleet", "ls", "--nats", url); !containsRow(ls, "h1", "web", "draining", web.Address, "-") {
		t.Fatalf("fleet ls: %q, without web draining", ls)
	}
	c.Close()
	eventually(t, func() bool { _, ok := fleetLs(t, d, url)["web"]; return !ok }, "web gone from fleet ls")
}

// echoOnce writes a byte to an echo listener's connection and reads it
// back: the connection is served.
func echoOnce(t *testing.T, c io.ReadWriter) {
	t.Helper()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil || b[0] != 'x' {
		t.Fatalf("echo: %q, %v", b, err)
	}
}

// A daemon killed (SIGKILL) stops writing its host key: its listeners turn
// gone in ctl fleet ls after three heartbeats; a daemon stopped (SIGTERM)
// marks its key stopped on the way out. Both keep what they last reported
// in -o json.
func TestFleetLsHostGoneOrStopped(t *testing.T) {
	s, err := natstest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natstest.Stop(s) })
	url := s.ClientURL()
	killed := startDaemon(t, "--nats", url, "--host-name", "h-kill", "--nats-heartbeat", "200ms")
	stopped := startDaemon(t, "--nats", url, "--host-name", "h-term", "--nats-heartbeat", "200ms")
	path := filepath.Join(t.TempDir(), "fleet.yaml")
	if err := os.WriteFile(path, []byte("hosts:\n  h-kill:\n    listeners:\n      k: {spec: {port: 0, handler: {echo: {}}}}\n"+
		"  h-term:\n    listeners:\n      s: {spec: {port: 0, handler: {echo: {}}}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	killed.mustCtl("fleet", "apply", "--nats", url, "-f", path)
	var rows map[string]fleetLsRow
	eventually(t, func() bool {
		rows = fleetLs(t, killed, url)
		up := func(r fleetLsRow) bool {
			return r.Status != nil && !r.Pending && r.Status.State == "listening" && r.HostState == "up"
		}
		return up(rows["k"]) && up(rows["s"])
	}, "k and s listening, their hosts up, in fleet ls")
	k, st := *rows["k"].Status, *rows["s"].Status

	killed.kill()
	stopped.stop()
	// Generous: gone comes three heartbeats (600 ms) after the last write.
	testkit.EventuallyWithin(t, 2*guard, func() bool {
		rows = fleetLs(t, stopped, url)
		return rows["k"].HostState == "gone" && rows["s"].HostState == "stopped"
	}, "h-kill gone and h-term stopped in fleet ls")
	if rows["k"].Status == nil || rows["k"].Status.State != "listening" || rows["k"].Status.Address != k.Address ||
		rows["s"].Status == nil || rows["s"].Status.State != "listening" || rows["s"].Status.Address != st.Address {
		t.Fatalf("rows %+v: want the statuses as last reported", rows)
	}
	ls := stopped.mustCtl("fleet", "ls", "--nats", url)
	if !containsRow(ls, "h-kill", "k", "gone", k.Address, "-") || !containsRow(ls, "h-term", "s", "stopped", st.Address, "-") {
		t.Fatalf("fleet ls: %q, want k gone and s stopped", ls)
	}
}
