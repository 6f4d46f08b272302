package e2e

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// forwardSpec is a forward listener's spec, to upstream with a connect
// timeout.
func forwardSpec(upstream string, timeout time.Duration) *listenerdv1.ListenerSpec {
	return &listenerdv1.ListenerSpec{Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Forward{
		Forward: &listenerdv1.ForwardHandler{Upstream: upstream, ConnectTimeout: durationpb.New(timeout)}}}}
}

// A forward whose upstream never answers closes the connection with
// UPSTREAM_FAILED and the dial's error (seen through ctl watch), and a
// connect timeout past the maximum is refused by name.
func TestForwardBlackHoleUpstream(t *testing.T) {
	d := startDaemon(t, "--ephemeral")
	_, err := d.client.CreateListener(testContext(t), &listenerdv1.CreateListenerRequest{Spec: forwardSpec("127.0.0.1:9", 5*time.Minute+time.Second)})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "spec.handler.forward.connect_timeout") {
		t.Fatalf("create with connect_timeout 5m1s: %v; want INVALID_ARGUMENT naming spec.handler.forward.connect_timeout", err)
	}
	resp, err := d.client.CreateListener(testContext(t), &listenerdv1.CreateListenerRequest{Spec: forwardSpec(testkit.BlackHole(t), 200*time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	l := resp.GetListener()
	w := d.ctlStream("watch", "-o", "json", "--since", "0", "--kind", "connection_closed", l.GetId())
	dial(t, l.GetStatus().GetBoundAddress())
	var ev listenerdv1.Event
	unmarshalLine(t, w.next(), &ev)
	cc := ev.GetConnectionClosed()
	if cc.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_UPSTREAM_FAILED || !strings.Contains(cc.GetError(), "connect timeout") {
		t.Fatalf("closed event %v; want UPSTREAM_FAILED with the dial's error", &ev)
	}
}
