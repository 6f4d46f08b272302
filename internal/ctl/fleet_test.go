package ctl

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/fleet"
	"github.com/listenerd/listenerd/internal/fleet/natstest"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/service"
	"github.com/listenerd/listenerd/internal/testkit"
)

// fleetDaemon is a daemon's engine in the test's process, publishing as
// listenerd --nats URL --host-name host does, with one listener that took
// one connection.
func fleetDaemon(t *testing.T, url, host string) (lnID string) {
	t.Helper()
	bus := events.NewBus(events.Options{})
	mgr := listener.NewManager(bus, nil, listener.Options{})
	t.Cleanup(func() { mgr.Shutdown(0) })
	nc, err := fleet.ConnConfig{URL: url}.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	pub, err := fleet.Start(nc, bus, fleet.Options{Host: host,
		Encode: func(dst []byte, e *events.Event) ([]byte, error) {
			return service.AppendEventJSON(dst, e, bus.BootID())
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Stop(10 * time.Second) })
	ln, err := mgr.Create(context.Background(), "", listener.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", ln.Info().Bound)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	testkit.Eventually(t, func() bool { return pub.Acked() == 3 }, host+"'s three events acknowledged")
	return ln.ID()
}

// runFleetUntil runs ctl fleet watch until its stdout holds stop.
func runFleetUntil(t *testing.T, stop string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a guard
	defer cancel()
	stdout, stderr := &testkit.Buffer{}, &testkit.Buffer{}
	stdout.OnOutput(stop, cancel)
	if code := runCtlWith(ctx, "/nonexistent", stdout, stderr, append([]string{"fleet", "watch"}, args...)...); code != ExitOK {
		t.Fatalf("fleet watch %v: exit %d, stderr %q", args, code, stderr)
	}
	if !strings.Contains(stdout.String(), stop) {
		t.Fatalf("fleet watch %v stopped before printing %q: %q", args, stop, stdout)
	}
	return stdout.String()
}

// ctl fleet watch prints two daemons' events from the stream, and one
// host's alone with --host.
func TestFleetWatch(t *testing.T) {
	s, err := natstest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer natstest.Stop(s)
	url := s.ClientURL()
	a := fleetDaemon(t, url, "alpha")
	b := fleetDaemon(t, url, "beta")

	out := runFleetUntil(t, "host=beta seq=3 "+b+" connection_closed", "--nats", url, "--since-seq", "1")
	for _, want := range []string{"host=alpha seq=1 " + a + " listener_started 127.0.0.1:", "host=alpha seq=3 " + a + " connection_closed",
		"host=beta seq=1 " + b + " listener_started"} {
		if !strings.Contains(out, want) {
			t.Errorf("fleet watch printed %q, without %q", out, want)
		}
	}
	if n := strings.Count(out, "\n"); n != 6 {
		t.Errorf("fleet watch printed %d lines, want 6: %q", n, out)
	}

	out = runFleetUntil(t, `"sequence":"3"`, "--nats", url, "--since", "1h", "--host", "alpha", "-o", "json")
	if strings.Contains(out, "beta") || strings.Count(out, `{"host":"alpha","sequence":"`) != 3 {
		t.Errorf("fleet watch --host alpha -o json printed %q", out)
	}

	// A gap record, as a daemon that lost events publishes it, is one line.
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	g := fleet.Gap{Host: "alpha", BootID: "b00t", From: 4, To: 9}
	data, _ := json.Marshal(fleet.GapRecord{Gap: &g})
	if err := nc.Publish(fleet.GapSubject("alpha"), data); err != nil {
		t.Fatal(err)
	}
	runFleetUntil(t, "host=alpha boot=b00t gap: seq=4..9 lost", "--nats", url, "--since-seq", "1", "--host", "alpha")
}

// A message packing several events of one subject (the publisher's
// batches: one event's JSON a line, the first event's sequence in its
// message id, the last's in a header) is printed one line per event, in
// text and in JSON, and in sequence order: the stream holds a message of
// newer events (6, 8) before one of older (5, 7, 9).
func TestFleetWatchPackedMessage(t *testing.T) {
	s, err := natstest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer natstest.Stop(s)
	url := s.ClientURL()
	fleetDaemon(t, url, "alpha") // makes the stream, as a daemon does
	const boot, ln = "b00t", "ln-0000beef"
	js := natstest.JetStream(t, url)
	pack := func(kind events.Kind, seqs ...uint64) {
		var data []byte
		for i, seq := range seqs {
			if i > 0 {
				data = append(data, '\n')
			}
			e := events.Event{Seq: seq, Time: time.Now().UnixNano(), Listener: ln, Kind: kind, Conn: uint64(i + 1),
				Tuple: events.Tuple{Remote: netip.MustParseAddrPort("127.0.0.1:4000" + strconv.Itoa(i)), Local: netip.MustParseAddrPort("127.0.0.1:80")}}
			if data, err = service.AppendEventJSON(data, &e, boot); err != nil {
				t.Fatal(err)
			}
		}
		m := nats.NewMsg(fleet.Subject("gamma", ln, kind))
		m.Data = data
		m.Header.Set(jetstream.MsgIDHeader, fleet.MsgID(boot, seqs[0]))
		m.Header.Set(fleet.LastSeqHeader, strconv.FormatUint(seqs[len(seqs)-1], 10))
		if _, err := js.PublishMsg(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	pack(events.KindConnectionClosed, 6, 8)
	pack(events.KindConnectionOpened, 5, 7, 9)
	// Then a message of one event, as today's: what the watch reads up to.
	e := events.Event{Seq: 10, Time: time.Now().UnixNano(), Listener: ln, Kind: events.KindListenerClosed}
	data, err := service.AppendEventJSON(nil, &e, boot)
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(fleet.Subject("gamma", ln, events.KindListenerClosed))
	m.Data = data
	m.Header.Set(jetstream.MsgIDHeader, fleet.MsgID(boot, 10))
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	seqs := []uint64{5, 6, 7, 8, 9, 10}

	out := runFleetUntil(t, "host=gamma seq=10 ", "--nats", url, "--since-seq", "1", "--host", "gamma")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 6 {
		t.Fatalf("fleet watch printed %d lines for messages of 2, 3 and 1 events, want 6: %q", len(lines), out)
	}
	for i, l := range lines {
		kind := "connection_opened"
		switch {
		case i == 5:
			kind = "listener_closed"
		case i%2 == 1:
			kind = "connection_closed"
		}
		want := "host=gamma seq=" + strconv.FormatUint(seqs[i], 10) + " " + ln + " " + kind
		if !strings.HasPrefix(l, want) {
			t.Errorf("line %d: %q, want %q…", i+1, l, want)
		}
	}

	out = runFleetUntil(t, `"sequence":"10"`, "--nats", url, "--since-seq", "1", "--host", "gamma", "-o", "json")
	lines = strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 6 {
		t.Fatalf("fleet watch -o json printed %d lines for messages of 2, 3 and 1 events, want 6: %q", len(lines), out)
	}
	for i, l := range lines {
		var ev struct {
			Host     string `json:"host"`
			Sequence string `json:"sequence"`
			Listener string `json:"listenerId"`
		}
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("line %d: %q: %v", i+1, l, err)
		}
		if ev.Host != "gamma" || ev.Sequence != strconv.FormatUint(seqs[i], 10) || ev.Listener != ln {
			t.Errorf("line %d: %q, want host gamma, sequence %d, listener %s", i+1, l, seqs[i], ln)
		}
	}
}

func TestFleetWatchUsage(t *testing.T) {
	for _, args := range [][]string{
		{"fleet", "watch"},
		{"fleet", "watch", "--nats", "nats://10.0.0.1:4222"},
		{"fleet", "watch", "--nats", "nats://127.0.0.1:4222", "--host", "a.b"},
		{"fleet", "watch", "--nats", "nats://127.0.0.1:4222", "--since", "1m", "--since-seq", "3"},
	} {
		r := runCtl(t, "/nonexistent", args...)
		if r.code != ExitUsage || !strings.Contains(r.stderr, "--") {
			t.Errorf("%v: exit %d, stderr %q; want a usage error naming the flag", args, r.code, r.stderr)
		}
	}
}

// With NATS unreachable, every ctl fleet command says so, with NATS's
// own words, and does not send the user to start the daemon (which ctl
// fleet does not ask).
func TestFleetNATSUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "nats://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	file := filepath.Join(t.TempDir(), "fleet.yaml")
	if err := os.WriteFile(file, []byte("hosts: {}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"fleet", "watch", "--nats", url},
		{"fleet", "ls", "--nats", url},
		{"fleet", "apply", "-f", file, "--nats", url, "--dry-run"},
	} {
		r := runCtl(t, "/nonexistent.sock", args...)
		if r.code != ExitUnavailable || !strings.Contains(r.stderr, "cannot reach NATS") ||
			strings.Contains(r.stderr, "listenerd") || strings.Contains(r.stderr, "go run ./daemon") {
			t.Errorf("%v: exit %d, stderr %q; want %d and NATS named, not the daemon", args, r.code, r.stderr, ExitUnavailable)
		}
	}
}
