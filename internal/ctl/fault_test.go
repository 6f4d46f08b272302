package ctl

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

func latencyFault() *listenerdv1.Fault {
	half := 0.5
	return &listenerdv1.Fault{Name: "slow", Kind: listenerdv1.FaultKind_FAULT_KIND_LATENCY,
		Direction: listenerdv1.FaultDirection_FAULT_DIRECTION_OUT, Probability: &half,
		Scope:   &listenerdv1.FaultScope{SourceCidrs: []string{"10.0.0.0/8"}},
		Latency: durationpb.New(50 * time.Millisecond), Jitter: durationpb.New(10 * time.Millisecond)}
}

// ctl listen --fault KIND,key=value… takes ctl fault add's flags as keys.
func TestListenFaultFlag(t *testing.T) {
	got, err := parseListen(t, "--fault", "latency,name=slow,latency=50ms,jitter=10ms,direction=out,probability=0.5,source=10.0.0.0/8",
		"--fault", "reset")
	if err != nil {
		t.Fatal(err)
	}
	assertProto(t, got, &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{Faults: []*listenerdv1.Fault{
		latencyFault(), {Name: "reset", Kind: listenerdv1.FaultKind_FAULT_KIND_RESET}}}})
	for _, bad := range []string{"bogus", "latency,latency", "latency,nope=1", "reset,direction=up", "timeout,delay=-1s"} {
		_, err := parseListen(t, "--fault", bad)
		assertUsage(t, err)
	}
}

// faultFake records the fault RPCs.
type faultFake struct {
	fakeService
	mu      sync.Mutex
	added   []*listenerdv1.AddFaultRequest
	updated []*listenerdv1.UpdateFaultRequest
	removed []string
}

func (f *faultFake) AddFault(_ context.Context, r *listenerdv1.AddFaultRequest) (*listenerdv1.AddFaultResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.added = append(f.added, r)
	return &listenerdv1.AddFaultResponse{Fault: r.GetFault()}, nil
}

func (f *faultFake) UpdateFault(_ context.Context, r *listenerdv1.UpdateFaultRequest) (*listenerdv1.UpdateFaultResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.updated = append(f.updated, r)
	return &listenerdv1.UpdateFaultResponse{Fault: r.GetFault()}, nil
}

func (f *faultFake) RemoveFault(_ context.Context, r *listenerdv1.RemoveFaultRequest) (*listenerdv1.RemoveFaultResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removed = append(f.removed, r.GetListenerId()+"/"+r.GetName())
	return &listenerdv1.RemoveFaultResponse{}, nil
}

func (f *faultFake) ListFaults(context.Context, *listenerdv1.ListFaultsRequest) (*listenerdv1.ListFaultsResponse, error) {
	return &listenerdv1.ListFaultsResponse{Faults: []*listenerdv1.Fault{latencyFault()}}, nil
}

func TestFaultAddLsRm(t *testing.T) {
	fake := &faultFake{}
	sock := startFake(t, fake)
	r := runCtl(t, sock, "fault", "add", "web", "latency", "--name", "slow", "--latency", "50ms", "--jitter", "10ms",
		"--direction", "out", "--probability", "0.5", "--source", "10.0.0.0/8")
	if r.code != ExitOK || !strings.Contains(r.stdout, "fault slow on web: latency 50ms ± 10ms") {
		t.Fatalf("add: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	assertProto(t, fake.added[0], &listenerdv1.AddFaultRequest{ListenerId: "web", Fault: latencyFault()})
	if r := runCtl(t, sock, "fault", "add", "web", "latency", "--name", "slow", "--latency", "1s", "--replace"); r.code != ExitOK || len(fake.updated) != 1 {
		t.Fatalf("add --replace: exit %d, %q, updates %d", r.code, r.stderr, len(fake.updated))
	}
	r = runCtl(t, sock, "fault", "ls", "web")
	if r.code != ExitOK || !strings.Contains(r.stdout, "NAME") || !strings.Contains(r.stdout, "slow") ||
		!strings.Contains(r.stdout, "source=10.0.0.0/8") {
		t.Fatalf("ls: exit %d, %q", r.code, r.stdout)
	}
	if r := runCtl(t, sock, "fault", "rm", "web", "slow", "other"); r.code != ExitOK || strings.Join(fake.removed, " ") != "web/slow web/other" {
		t.Fatalf("rm: exit %d, %q, removed %v", r.code, r.stderr, fake.removed)
	}
	if r := runCtl(t, sock, "fault", "add", "web", "nope"); r.code != ExitUsage {
		t.Fatalf("unknown kind: exit %d, want usage", r.code)
	}
}

// ctl watch names the fault events, and the closes and rejects a fault
// makes.
func TestFaultEventLines(t *testing.T) {
	for _, tc := range []struct {
		ev   *listenerdv1.Event
		want string
	}{
		{&listenerdv1.Event{Kind: &listenerdv1.Event_FaultAdded{FaultAdded: &listenerdv1.FaultAdded{Fault: latencyFault()}}},
			"fault_added fault=slow latency 50ms ± 10ms direction=out probability=0.5"},
		{&listenerdv1.Event{Kind: &listenerdv1.Event_FaultRemoved{FaultRemoved: &listenerdv1.FaultRemoved{Name: "slow",
			Kind: listenerdv1.FaultKind_FAULT_KIND_LATENCY, Expired: true}}}, "fault_removed fault=slow kind=latency expired"},
		{&listenerdv1.Event{Kind: &listenerdv1.Event_FaultApplied{FaultApplied: &listenerdv1.FaultApplied{Name: "slow",
			Kind: listenerdv1.FaultKind_FAULT_KIND_LATENCY, ConnectionId: "ln-1.3", Draw: 0.25}}}, "fault_applied c=ln-1.3"},
		{&listenerdv1.Event{Kind: &listenerdv1.Event_ConnectionClosed{ConnectionClosed: &listenerdv1.ConnectionClosed{
			Reason: listenerdv1.CloseReason_CLOSE_REASON_FAULT, Fault: "rst"}}}, "reason=fault in=0 out=0 duration=0s fault=rst"},
		{&listenerdv1.Event{Kind: &listenerdv1.Event_ConnectionRejected{ConnectionRejected: &listenerdv1.ConnectionRejected{
			Reason: listenerdv1.RejectReason_REJECT_REASON_FAULT, Fault: "no"}}}, "reason=fault fault=no"},
	} {
		if got := eventLine(tc.ev, false); !strings.Contains(got, tc.want) {
			t.Errorf("%q does not hold %q", got, tc.want)
		}
	}
}

// ctl conns shows each connection's draws when a fault is in force.
func TestConnsShowDraws(t *testing.T) {
	a := newApp(nil, nil)
	var b strings.Builder
	err := a.writeConnections(&b, []*listenerdv1.Connection{{Id: "ln-1.1", Faults: []*listenerdv1.ConnectionFault{
		{Fault: "lat", Draw: 0.11, Applies: true}, {Fault: "rst", Draw: 0.6695}}}})
	if err != nil || !strings.Contains(b.String(), "FAULTS") || !strings.Contains(b.String(), "lat=0.1100:on rst=0.6695:off") {
		t.Fatalf("conns: %q, %v", b.String(), err)
	}
}
