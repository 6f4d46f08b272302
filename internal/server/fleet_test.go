package server

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/fleet"
	"github.com/listenerd/listenerd/internal/fleet/natstest"
	"github.com/listenerd/listenerd/internal/testkit"
)

// The daemon with --nats publishes its events, the last ones of its
// shutdown (the listener closing) included.
func TestRunPublishesToNATS(t *testing.T) {
	s, err := natstest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natstest.Stop(s) })
	var lnID string
	t.Run("daemon", func(t *testing.T) { // its cleanup stops the daemon
		d := startRun(t, Config{Ephemeral: true, ShutdownTimeout: 5 * time.Second,
			Fleet: FleetConfig{ConnConfig: fleet.ConnConfig{URL: s.ClientURL()}, Host: "srv", Replicas: 1, Heartbeat: fleet.DefaultHeartbeat}})
		resp, err := d.unix.CreateListener(testContext(t), &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{}})
		if err != nil {
			t.Fatal(err)
		}
		lnID = resp.GetListener().GetId()
		c := testkit.Dial(t, resp.GetListener().GetStatus().GetBoundAddress())
		c.Close()
	})
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)
	st, err := js.Stream(ctx, fleet.Stream)
	if err != nil {
		t.Fatal(err)
	}
	// started, opened, closed, then the shutdown's listener_closed
	m, err := st.GetLastMsgForSubject(ctx, fleet.HostSubjects("srv"))
	if err != nil {
		t.Fatal(err)
	}
	if want := fleet.Prefix + ".srv." + lnID + ".listener_closed"; m.Subject != want || !strings.HasSuffix(m.Header.Get(jetstream.MsgIDHeader), "-4") {
		t.Fatalf("last message %s id %s, want %s, the 4th event", m.Subject, m.Header.Get(jetstream.MsgIDHeader), want)
	}
	info, err := st.Info(ctx)
	if err != nil || info.State.Msgs != 4 {
		t.Fatalf("stream holds %v messages (%v), want 4", info, err)
	}
}

func TestFleetConfigErrors(t *testing.T) {
	ok := FleetConfig{ConnConfig: fleet.ConnConfig{URL: "nats://127.0.0.1:4222"}, Host: "h", Replicas: 1, Heartbeat: time.Second}
	for _, tc := range []struct {
		mod  func(*FleetConfig)
		flag string
	}{
		{func(c *FleetConfig) { c.Host = "a.b" }, "--host-name"},
		{func(c *FleetConfig) { c.Host = "" }, "--host-name"},
		{func(c *FleetConfig) { c.Replicas = 7 }, "--nats-replicas"},
		{func(c *FleetConfig) { c.MaxAge = -time.Second }, "--nats-max-age"},
		{func(c *FleetConfig) { c.Pack = -1 }, "--nats-pack"},
		{func(c *FleetConfig) { c.Pack = fleet.MaxPack + 1 }, "--nats-pack"},
		{func(c *FleetConfig) { c.Heartbeat = 0 }, "--nats-heartbeat"},
		{func(c *FleetConfig) { c.Heartbeat = -time.Second }, "--nats-heartbeat"},
		{func(c *FleetConfig) { c.URL = "nats://192.0.2.1:4222" }, "--nats"},
		{func(c *FleetConfig) { c.URL = "http://127.0.0.1:4222" }, "--nats"},
		{func(c *FleetConfig) { c.Creds, c.TokenFile = "a", "b" }, "--nats-creds"},
		{func(c *FleetConfig) { c.URL, c.CA = "", "ca.pem" }, "--nats-ca"},
	} {
		c := ok
		tc.mod(&c)
		if err := c.check(); err == nil || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("%+v: %v, want an error naming %s", c, err, tc.flag)
		}
	}
	if err := ok.check(); err != nil {
		t.Errorf("%+v: %v", ok, err)
	}
}

// What the NATS client reports asynchronously on the daemon's connection
// (a slow consumer; a watch's consumer that stopped answering while NATS
// was away) goes to the daemon's log, as a warning with its time, not as
// a bare line on stderr.
func TestFleetNATSAsyncErrorsLogged(t *testing.T) {
	s, err := natstest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natstest.Stop(s) })
	var logs testkit.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	nc, stop, err := startFleet(FleetConfig{ConnConfig: fleet.ConnConfig{URL: s.ClientURL()}, Host: "h", Replicas: 1},
		events.NewBus(events.Options{}), nil, log)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	release := make(chan struct{})
	sub, err := nc.Subscribe("slow", func(*nats.Msg) { <-release })
	if err != nil {
		t.Fatal(err)
	}
	defer close(release)
	if err := sub.SetPendingLimits(1, -1); err != nil {
		t.Fatal(err)
	}
	for range 3 { // one taken, one pending, one over the limit
		if err := nc.Publish("slow", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	testkit.EventuallyWithin(t, time.Minute, func() bool {
		return strings.Contains(logs.String(), "level=WARN") && strings.Contains(logs.String(), nats.ErrSlowConsumer.Error())
	}, "the slow consumer in the log")
}
