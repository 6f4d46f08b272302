package natstest_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/listenerd/listenerd/internal/fleet/natstest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, natstest.Leaks...) }

// guard bounds every wait on the cluster (an election, a placement): a
// safety net, never a timing.
const guard = 2 * time.Minute

// A cluster stopped entirely and restarted keeps its replicated stream,
// its messages and its duplicate window, on new client ports.
func TestRestart(t *testing.T) {
	ss, err := natstest.Cluster(t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	running := ss
	defer func() {
		for _, s := range running {
			natstest.Stop(s)
		}
	}()
	if _, err := natstest.Restart(ss...); err == nil {
		t.Fatal("Restart of running servers: no error")
	}
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	publish := func(js jetstream.JetStream) *jetstream.PubAck {
		t.Helper()
		var ack *jetstream.PubAck
		retry(t, ctx, "publish", func(ctx context.Context) (err error) {
			ack, err = js.PublishMsg(ctx, &nats.Msg{Subject: "t.one", Data: []byte("x"),
				Header: nats.Header{jetstream.MsgIDHeader: []string{"one"}}})
			return err
		})
		return ack
	}
	js := natstest.JetStream(t, natstest.URLs(ss...))
	retry(t, ctx, "stream", func(ctx context.Context) error {
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Replicas: 3,
			Duplicates: time.Hour})
		return err
	})
	if ack := publish(js); ack.Duplicate || ack.Sequence != 1 {
		t.Fatalf("first publish: %+v", ack)
	}

	old := map[string]bool{}
	for _, s := range ss {
		old[s.ClientURL()] = true
		natstest.Stop(s)
	}
	running = nil
	again, err := natstest.Restart(ss...)
	if err != nil {
		t.Fatal(err)
	}
	running = again
	for i, s := range again {
		if s.Name() != ss[i].Name() {
			t.Errorf("server %d restarted as %s, want %s", i, s.Name(), ss[i].Name())
		}
		if old[s.ClientURL()] {
			t.Errorf("%s restarted on its old client URL %s", s.Name(), s.ClientURL())
		}
	}
	js = natstest.JetStream(t, natstest.URLs(again...))
	ack := publish(js) // the same message id: in the duplicate window kept in the store
	if !ack.Duplicate || ack.Sequence != 1 {
		t.Errorf("the message published again after the restart: %+v, want a duplicate of sequence 1", ack)
	}
	var info *jetstream.StreamInfo
	retry(t, ctx, "stream info", func(ctx context.Context) error {
		st, err := js.Stream(ctx, "T")
		if err == nil {
			info, err = st.Info(ctx)
		}
		return err
	})
	if info.State.Msgs != 1 || info.Config.Replicas != 3 {
		t.Errorf("after the restart the stream holds %d messages on %d replicas, want 1 on 3", info.State.Msgs, info.Config.Replicas)
	}
	if info.Cluster == nil || !strings.HasPrefix(info.Cluster.Leader, "n") {
		t.Errorf("the stream's cluster: %+v", info.Cluster)
	}
}

// retry calls op, each call bounded, until it succeeds or ctx ends: a
// cluster electing its leaders answers nothing for a while.
func retry(t *testing.T, ctx context.Context, what string, op func(context.Context) error) {
	t.Helper()
	for {
		octx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := op(octx)
		cancel()
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("%s: %v", what, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond): // a retry's pace
		}
	}
}
