package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/listenerd/listenerd/internal/fleet"
	"github.com/listenerd/listenerd/internal/fleet/natstest"
)

// loopbacks returns the addresses if each is bindable, or skips.
func loopbacks(t *testing.T, addrs ...string) []string {
	t.Helper()
	for _, a := range addrs {
		ln, err := net.Listen("tcp", net.JoinHostPort(a, "0"))
		if err != nil {
			t.Skipf("%s is not bindable here: %v", a, err)
		}
		ln.Close()
	}
	return addrs
}

// The acceptance scenario: a three-node JetStream cluster, three
// real daemons (hosts h2, h3, h4, their listeners on 127.0.0.2, .3, .4);
// ctl fleet apply puts listeners on two of them, which come up and answer,
// ctl fleet ls shows them listening, and each one's connection is in
// ctl fleet watch exactly once.
func TestFleetApplyCluster(t *testing.T) {
	ips := loopbacks(t, "127.0.0.2", "127.0.0.3", "127.0.0.4")
	cl := startNATSCluster(t)
	url, js, kv := cl.url, cl.js, cl.kv
	slow, cancel := context.WithTimeout(context.Background(), clusterGuard)
	defer cancel()
	hosts := []string{"h2", "h3", "h4"}
	var d *daemon
	for _, h := range hosts {
		d = startDaemon(t, "--nats", url, "--host-name", h, "--nats-replicas", "3")
	}
	w, err := kv.Watch(slow, fleet.HostKeys(fleet.StatusPrefix, "*"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop() }()

	file := filepath.Join(t.TempDir(), "fleet.yaml")
	text := fmt.Sprintf("hosts:\n  h2:\n    listeners:\n      web: {spec: {host: %s, port: 0, handler: {echo: {}}}}\n"+
		"  h3:\n    listeners:\n      web: {spec: {host: %s, port: 0, handler: {echo: {}}}}\n", ips[0], ips[1])
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	out := d.mustCtl("fleet", "apply", "--nats", url, "-f", file)
	if out != "host h2:\n  create web\nhost h3:\n  create web\n" {
		t.Fatalf("fleet apply printed %q", out)
	}

	// Both listening, as their daemons report.
	statuses := map[string]fleet.Status{}
	for len(statuses) < 2 {
		select {
		case e := <-w.Updates():
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var st fleet.Status
			if err := json.Unmarshal(e.Value(), &st); err != nil || st.State != "listening" {
				t.Fatalf("%s: %s (%v)", e.Key(), e.Value(), err)
			}
			statuses[e.Key()] = st
		case <-slow.Done():
			t.Fatalf("statuses %v, want h2's and h3's web listening", statuses)
		}
	}
	for i, h := range hosts[:2] {
		st := statuses[fleet.StatusKey(h, "web")]
		if !strings.HasPrefix(st.Address, ips[i]+":") {
			t.Fatalf("%s's web: %+v, want it on %s", h, st, ips[i])
		}
		c := dial(t, st.Address)
		if _, err := c.Write([]byte("hi")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hi" {
			t.Fatalf("%s's web echoed %q, %v", h, buf, err)
		}
		c.Close()
	}
	ls := d.mustCtl("fleet", "ls", "--nats", url)
	for _, h := range hosts[:2] {
		if !containsRow(ls, h, "web", "listening", statuses[fleet.StatusKey(h, "web")].Address, "-") {
			t.Errorf("fleet ls: %q, without %s's web listening", ls, h)
		}
	}
	if strings.Contains(ls, "h4") {
		t.Errorf("fleet ls: %q lists h4, which has no listener", ls)
	}

	// Each connection in fleet watch once: read until both closed, then
	// count the opened in the stream.
	cl.waitStream() // the daemons create it, retrying
	watch := d.ctlStream("fleet", "watch", "--nats", url, "--since-seq", "1")
	closed := map[string]bool{}
	for len(closed) < 2 {
		l := watch.next()
		for _, h := range hosts[:2] {
			if strings.HasPrefix(l, "host="+h+" ") && strings.Contains(l, statuses[fleet.StatusKey(h, "web")].ID+" connection_closed") {
				closed[h] = true
			}
		}
	}
	st, err := js.Stream(slow, fleet.Stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(slow, jetstream.WithSubjectFilter(fleet.Prefix+".*.*.connection_opened"))
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts[:2] {
		subj := fleet.Prefix + "." + h + "." + statuses[fleet.StatusKey(h, "web")].ID + ".connection_opened"
		if n := info.State.Subjects[subj]; n != 1 {
			t.Errorf("%s: %d messages, want 1 (all: %v)", subj, n, info.State.Subjects)
		}
	}
	if len(info.State.Subjects) != 2 {
		t.Errorf("connection_opened subjects %v, want h2's and h3's only", info.State.Subjects)
	}
}

// containsRow reports whether table holds a row of these cells.
func containsRow(table string, cells ...string) bool {
	for l := range strings.SplitSeq(table, "\n") {
		if strings.Join(strings.Fields(l), " ") == strings.Join(cells, " ") {
			return true
		}
	}
	return false
}

// --listeners and --nats at once are refused at start, naming the way
// out; --nats-desired=false lets the file declare while events go to NATS.
func TestDaemonListenersFileAndNATSDesired(t *testing.T) {
	file := filepath.Join(t.TempDir(), "l.yaml")
	if err := os.WriteFile(file, []byte("listeners: {}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	r := runBin(t, daemonBin, nil, "", "--ephemeral", "--socket", filepath.Join(dir, "s.sock"), "--listeners", file,
		"--nats", "nats://127.0.0.1:4222", "--host-name", "h")
	if r.code != 2 || !strings.Contains(r.stderr, "--listeners and --nats") || !strings.Contains(r.stderr, "--nats-desired=false") {
		t.Fatalf("exit %d, stderr %s", r.code, r.stderr)
	}
	s, err := natstest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natstest.Stop(s) })
	d := startDaemon(t, "--listeners", file, "--nats", s.ClientURL(), "--host-name", "h", "--nats-desired=false")
	if out := d.mustCtl("ls"); strings.Count(out, "\n") > 1 {
		t.Fatalf("ls: %q", out)
	}
}
