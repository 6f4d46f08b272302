package server

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"

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
	// started, opened, closed, then the shutdown's listener_closed: each
	// event once, in order, however the messages pack them.
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.OrderedConsumer(ctx, fleet.Stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{fleet.HostSubjects("srv")}})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(int(info.State.Msgs), jetstream.FetchMaxWait(30*time.Second)) // returns once all came; a guard
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var last jetstream.Msg
	for m := range batch.Messages() {
		last = m
		for data := range fleet.Events(m.Data()) {
			var ev listenerdv1.Event
			if err := protojson.Unmarshal(data, &ev); err != nil {
				t.Fatalf("message on %s: %q: %v", m.Subject(), data, err)
			}
			r := ev.ProtoReflect()
			kind := r.WhichOneof(r.Descriptor().Oneofs().ByName("kind")) // listener_started…
			if kind == nil {
				t.Fatalf("message on %s: %q: no kind", m.Subject(), data)
			}
			got = append(got, fmt.Sprintf("%d %s %s", ev.GetSequence(), ev.GetListenerId(), kind.Name()))
		}
	}
	if err := batch.Error(); err != nil {
		t.Fatal(err)
	}
	want := []string{"1 " + lnID + " listener_started", "2 " + lnID + " connection_opened", "3 " + lnID + " connection_closed",
		"4 " + lnID + " listener_closed"}
	if !slices.Equal(got, want) {
		t.Fatalf("the stream's events %q, want %q", got, want)
	}
	if want := fleet.Prefix + ".srv." + lnID + ".listener_closed"; last.Subject() != want {
		t.Fatalf("last message on %s, want %s", last.Subject(), want)
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
