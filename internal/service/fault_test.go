package service

import (
	"errors"
	"io"
	"syscall"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/testkit"
)

func p64(v float64) *float64 { return &v }

// The fault RPCs' errors, each with its code.
func TestFaultErrors(t *testing.T) {
	c := newClient(t, events.Options{})
	createOK(t, c, "web", echoSpec())
	lat := &listenerdv1.Fault{Name: "lat", Kind: listenerdv1.FaultKind_FAULT_KIND_LATENCY, Latency: durationpb.New(1e6)}
	if _, err := c.AddFault(ctx(t), &listenerdv1.AddFaultRequest{ListenerId: "web", Fault: lat}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"no listener id", func() error {
			_, err := c.AddFault(ctx(t), &listenerdv1.AddFaultRequest{Fault: lat})
			return err
		}, codes.InvalidArgument},
		{"no kind", func() error {
			_, err := c.AddFault(ctx(t), &listenerdv1.AddFaultRequest{ListenerId: "web", Fault: &listenerdv1.Fault{Name: "x"}})
			return err
		}, codes.InvalidArgument},
		{"probability over 1", func() error {
			_, err := c.AddFault(ctx(t), &listenerdv1.AddFaultRequest{ListenerId: "web", Fault: &listenerdv1.Fault{Name: "x",
				Kind: listenerdv1.FaultKind_FAULT_KIND_RESET, Probability: p64(1.5)}})
			return err
		}, codes.InvalidArgument},
		{"bad source", func() error {
			_, err := c.AddFault(ctx(t), &listenerdv1.AddFaultRequest{ListenerId: "web", Fault: &listenerdv1.Fault{Name: "x",
				Kind: listenerdv1.FaultKind_FAULT_KIND_RESET, Scope: &listenerdv1.FaultScope{SourceCidrs: []string{"nope"}}}})
			return err
		}, codes.InvalidArgument},
		{"unknown listener", func() error {
			_, err := c.AddFault(ctx(t), &listenerdv1.AddFaultRequest{ListenerId: "nope", Fault: lat})
			return err
		}, codes.NotFound},
		{"name taken", func() error {
			_, err := c.AddFault(ctx(t), &listenerdv1.AddFaultRequest{ListenerId: "web", Fault: lat})
			return err
		}, codes.AlreadyExists},
		{"update unknown fault", func() error {
			_, err := c.UpdateFault(ctx(t), &listenerdv1.UpdateFaultRequest{ListenerId: "web",
				Fault: &listenerdv1.Fault{Name: "other", Kind: listenerdv1.FaultKind_FAULT_KIND_BLACKHOLE}})
			return err
		}, codes.NotFound},
		{"remove unknown fault", func() error {
			_, err := c.RemoveFault(ctx(t), &listenerdv1.RemoveFaultRequest{ListenerId: "web", Name: "other"})
			return err
		}, codes.NotFound},
		{"remove without name", func() error {
			_, err := c.RemoveFault(ctx(t), &listenerdv1.RemoveFaultRequest{ListenerId: "web"})
			return err
		}, codes.InvalidArgument},
		{"list unknown listener", func() error {
			_, err := c.ListFaults(ctx(t), &listenerdv1.ListFaultsRequest{ListenerId: "nope"})
			return err
		}, codes.NotFound},
		{"bad spec fault", func() error {
			_, err := c.CreateListener(ctx(t), &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{
				Faults: []*listenerdv1.Fault{{Name: "x", Kind: listenerdv1.FaultKind_FAULT_KIND_LIMIT_DATA}}}})
			return err
		}, codes.InvalidArgument},
	} {
		if got := status.Code(tc.call()); got != tc.code {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.code)
		}
	}
}

// A fault given in the spec is listed, applies to a connection (its draw
// in ListConnections), resets it with a reason naming it, and its events
// come through the watch.
func TestFaultRoundTrip(t *testing.T) {
	c := newClient(t, events.Options{})
	spec := echoSpec()
	spec.Faults = []*listenerdv1.Fault{{Name: "stall", Kind: listenerdv1.FaultKind_FAULT_KIND_TIMEOUT}}
	l := createOK(t, c, "web", spec)
	if got := l.GetSpec().GetFaults(); len(got) != 1 || got[0].GetName() != "stall" || got[0].GetProbability() != 1 {
		t.Fatalf("spec faults %v", got)
	}
	var after uint64
	stream, err := c.WatchEvents(ctx(t), &listenerdv1.WatchEventsRequest{ListenerIds: []string{"web"}, AfterSequence: &after})
	if err != nil {
		t.Fatal(err)
	}
	conn := testkit.Dial(t, l.GetStatus().GetBoundAddress())
	testkit.Eventually(t, func() bool {
		cs, err := c.ListConnections(ctx(t), &listenerdv1.ListConnectionsRequest{ListenerId: "web"})
		return err == nil && len(cs.GetConnections()) == 1 && len(cs.GetConnections()[0].GetFaults()) == 1 &&
			cs.GetConnections()[0].GetFaults()[0].GetApplies()
	}, "the connection listed with its draw")
	rst := &listenerdv1.Fault{Name: "rst", Kind: listenerdv1.FaultKind_FAULT_KIND_RESET}
	if _, err := c.AddFault(ctx(t), &listenerdv1.AddFaultRequest{ListenerId: "web", Fault: rst}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(conn); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read: %v, want ECONNRESET", err)
	}
	if _, err := c.RemoveFault(ctx(t), &listenerdv1.RemoveFaultRequest{ListenerId: "web", Name: "rst"}); err != nil {
		t.Fatal(err)
	}
	fs, err := c.ListFaults(ctx(t), &listenerdv1.ListFaultsRequest{ListenerId: "web"})
	if err != nil || len(fs.GetFaults()) != 1 || fs.GetFaults()[0].GetName() != "stall" {
		t.Fatalf("list: %v, %v", fs, err)
	}
	var added, applied, removed, closed bool
	for !(added && applied && removed && closed) {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range resp.GetEvents() {
			switch {
			case e.GetFaultAdded().GetFault().GetName() == "rst":
				added = true
			case e.GetFaultApplied().GetName() == "rst" && e.GetFaultApplied().GetConnectionId() != "":
				applied = true
			case e.GetFaultRemoved().GetName() == "rst":
				removed = true
			case e.GetConnectionClosed() != nil:
				cl := e.GetConnectionClosed()
				if cl.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_FAULT || cl.GetFault() != "rst" {
					t.Fatalf("closed %v, want reason FAULT naming rst", cl)
				}
				closed = true
			}
		}
	}
}
