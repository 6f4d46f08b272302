package service

import (
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newClient serves a Service over bufconn and returns a real gRPC client.
func newClient(t *testing.T, opts events.Options) listenerdv1.ListenerServiceClient {
	t.Helper()
	c, _, _ := newClientConn(t, opts)
	return c
}

// newClientConn also returns the client connection and the manager behind
// the service.
func newClientConn(t *testing.T, opts events.Options) (listenerdv1.ListenerServiceClient, *grpc.ClientConn, *listener.Manager) {
	t.Helper()
	mgr := listener.NewManager(events.NewBus(opts), nil, listener.Options{})
	srv := grpc.NewServer(ServerOption())
	listenerdv1.RegisterListenerServiceServer(srv, New(mgr, nil))
	lis := bufconn.Listen(1 << 20)
	go func() { _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		mgr.Bus().Close()
		srv.Stop()
		mgr.Shutdown(0)
	})
	return listenerdv1.NewListenerServiceClient(conn), conn, mgr
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func echoSpec() *listenerdv1.ListenerSpec {
	return &listenerdv1.ListenerSpec{Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Echo{Echo: &listenerdv1.EchoHandler{}}}}
}

func u32(v uint32) *uint32 { return &v }

func createOK(t *testing.T, c listenerdv1.ListenerServiceClient, name string, spec *listenerdv1.ListenerSpec) *listenerdv1.Listener {
	t.Helper()
	resp, err := c.CreateListener(ctx(t), &listenerdv1.CreateListenerRequest{Name: name, Spec: spec})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	return resp.GetListener()
}

// TestErrorMatrix: every status code this API maps has a case, and the
// message names the field at fault.
func TestErrorMatrix(t *testing.T) {
	c := newClient(t, events.Options{MaxWatchers: 2})
	taken := createOK(t, c, "taken", echoSpec())
	_, takenPort, _ := net.SplitHostPort(taken.GetStatus().GetBoundAddress())
	port, _ := strconv.Atoi(takenPort)
	foreign, err := net.Listen("tcp", "127.0.0.1:0") // in use by someone else
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	foreignPort := uint32(foreign.Addr().(*net.TCPAddr).Port)

	create := func(name string, spec *listenerdv1.ListenerSpec) func() error {
		return func() error {
			_, err := c.CreateListener(ctx(t), &listenerdv1.CreateListenerRequest{Name: name, Spec: spec})
			return err
		}
	}
	update := func(id string, lim *listenerdv1.Limits, paths ...string) func() error {
		return func() error {
			_, err := c.UpdateListener(ctx(t), &listenerdv1.UpdateListenerRequest{
				Listener:   &listenerdv1.Listener{Id: id, Spec: &listenerdv1.ListenerSpec{Limits: lim}},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: paths}})
			return err
		}
	}
	watch := func(req *listenerdv1.WatchEventsRequest) func() error {
		return func() error {
			s, err := c.WatchEvents(ctx(t), req)
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}
	}
	neg := durationpb.New(-time.Second)
	tests := []struct {
		name  string
		call  func() error
		code  codes.Code
		field string // expected in the message
	}{
		{"no spec", create("", nil), codes.InvalidArgument, "spec"},
		{"port too big", create("", &listenerdv1.ListenerSpec{Port: 70000}), codes.InvalidArgument, "spec.port"},
		{"bad host", create("", &listenerdv1.ListenerSpec{Host: "bad host!"}), codes.InvalidArgument, "spec.host"},
		{"foreign host", create("", &listenerdv1.ListenerSpec{Host: "192.0.2.7"}), codes.InvalidArgument, "spec.host"},
		{"bad cidr", create("", &listenerdv1.ListenerSpec{AllowCidrs: []string{"10.0.0.0/8", "10.0.0.0/33"}}), codes.InvalidArgument, "spec.allow_cidrs[1]"},
		{"bad deny cidr", create("", &listenerdv1.ListenerSpec{DenyCidrs: []string{"nope"}}), codes.InvalidArgument, "spec.deny_cidrs[0]"},
		{"cidr with host bits", create("", &listenerdv1.ListenerSpec{AllowCidrs: []string{"10.1.2.3/8"}}), codes.InvalidArgument,
			`spec.allow_cidrs[0]: "10.1.2.3/8" has host bits set: did you mean the network 10.0.0.0/8 (or 10.1.2.3/32, that one host)?`},
		{"ipv6 cidr with host bits", create("", &listenerdv1.ListenerSpec{DenyCidrs: []string{"::1", "fd00::1/64"}}), codes.InvalidArgument,
			`spec.deny_cidrs[1]: "fd00::1/64" has host bits set: did you mean the network fd00::/64`},
		{"negative idle", create("", &listenerdv1.ListenerSpec{Limits: &listenerdv1.Limits{IdleTimeout: neg}}), codes.InvalidArgument, "spec.limits.idle_timeout"},
		{"idle past time.Duration", create("", &listenerdv1.ListenerSpec{Limits: &listenerdv1.Limits{IdleTimeout: &durationpb.Duration{Seconds: 1e10}}}), codes.InvalidArgument, "spec.limits.idle_timeout: 10000000000s is out of range"},
		{"negative past time.Duration", create("", &listenerdv1.ListenerSpec{Limits: &listenerdv1.Limits{IdleTimeout: &durationpb.Duration{Seconds: -1e10}}}), codes.InvalidArgument, "got -10000000000s"},
		{"upstream timeout past time.Duration", create("", &listenerdv1.ListenerSpec{Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Forward{Forward: &listenerdv1.ForwardHandler{
			Upstream: "127.0.0.1:9", ConnectTimeout: &durationpb.Duration{Seconds: 9223372036, Nanos: 854775808}}}}}), codes.InvalidArgument,
			"spec.handler.forward.connect_timeout: 9223372036.854775808s is out of range"},
		{"upstream timeout past the maximum", create("", &listenerdv1.ListenerSpec{Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Forward{Forward: &listenerdv1.ForwardHandler{
			Upstream: "127.0.0.1:9", ConnectTimeout: durationpb.New(5*time.Minute + time.Second)}}}}), codes.InvalidArgument,
			"spec.handler.forward.connect_timeout: 5m1s is longer than the maximum, 5m0s"},
		{"negative past time.Duration by a nanosecond", create("", &listenerdv1.ListenerSpec{Limits: &listenerdv1.Limits{MaxLifetime: &durationpb.Duration{Seconds: -9223372036, Nanos: -854775809}}}),
			codes.InvalidArgument, "got -9223372036.854775809s"},
		{"backlog zero", create("", &listenerdv1.ListenerSpec{Backlog: u32(0)}), codes.InvalidArgument, "spec.backlog"},
		{"overflow unknown", create("", &listenerdv1.ListenerSpec{Limits: &listenerdv1.Limits{Overflow: 9}}), codes.InvalidArgument, "spec.limits.overflow"},
		{"forward no upstream", create("", &listenerdv1.ListenerSpec{Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Forward{Forward: &listenerdv1.ForwardHandler{}}}}), codes.InvalidArgument, "spec.handler.forward.upstream"},
		{"bad name", create("No Spaces", echoSpec()), codes.InvalidArgument, "name"},
		{"get no id", func() error { _, err := c.GetListener(ctx(t), &listenerdv1.GetListenerRequest{}); return err }, codes.InvalidArgument, "id"},
		{"update no mask", update(taken.GetId(), nil), codes.InvalidArgument, "update_mask"},
		{"update bad path", update(taken.GetId(), nil, "spec.port"), codes.InvalidArgument, "update_mask"},
		{"update negative", update(taken.GetId(), &listenerdv1.Limits{MaxLifetime: neg}, "spec.limits.max_lifetime"), codes.InvalidArgument, "spec.limits.max_lifetime"},
		{"close negative drain", func() error {
			_, err := c.CloseListener(ctx(t), &listenerdv1.CloseListenerRequest{Id: taken.GetId(), DrainTimeout: neg})
			return err
		}, codes.InvalidArgument, "drain_timeout"},
		{"kick malformed", func() error {
			_, err := c.CloseConnection(ctx(t), &listenerdv1.CloseConnectionRequest{Id: "nodot"})
			return err
		}, codes.InvalidArgument, "id"},
		{"watch bad kind", watch(&listenerdv1.WatchEventsRequest{Kinds: []listenerdv1.EventKind{99}}), codes.InvalidArgument, "kinds[0]"},
		{"get unknown", func() error {
			_, err := c.GetListener(ctx(t), &listenerdv1.GetListenerRequest{Id: "ln-00000000"})
			return err
		}, codes.NotFound, "ln-00000000"},
		{"update unknown", update("ghost", &listenerdv1.Limits{}, "spec.limits"), codes.NotFound, "ghost"},
		{"close unknown", func() error {
			_, err := c.CloseListener(ctx(t), &listenerdv1.CloseListenerRequest{Id: "ghost"})
			return err
		}, codes.NotFound, "ghost"},
		{"conns unknown", func() error {
			_, err := c.ListConnections(ctx(t), &listenerdv1.ListConnectionsRequest{ListenerId: "ghost"})
			return err
		}, codes.NotFound, "ghost"},
		{"kick unknown", func() error {
			_, err := c.CloseConnection(ctx(t), &listenerdv1.CloseConnectionRequest{Id: taken.GetId() + ".7"})
			return err
		}, codes.NotFound, taken.GetId() + ".7"},
		{"name taken", create("taken", echoSpec()), codes.AlreadyExists, "taken"},
		{"port in use by us", create("", &listenerdv1.ListenerSpec{Port: uint32(port)}), codes.FailedPrecondition, "address already in use"},
		{"port in use by anyone", create("", &listenerdv1.ListenerSpec{Port: foreignPort}), codes.FailedPrecondition, "address already in use"},
		{"watch future", watch(&listenerdv1.WatchEventsRequest{AfterSequence: proto64(1000)}), codes.OutOfRange, "after_sequence"},
		{"watch other boot", watch(&listenerdv1.WatchEventsRequest{BootId: "feedface"}), codes.OutOfRange, "boot_id"},
		{"watch unknown name", watch(&listenerdv1.WatchEventsRequest{ListenerIds: []string{"ghost"}}), codes.NotFound, "ghost"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			st := status.Convert(err)
			if st.Code() != tc.code {
				t.Fatalf("code %v (%v), want %v", st.Code(), err, tc.code)
			}
			if !strings.Contains(st.Message(), tc.field) {
				t.Fatalf("message %q does not name %q", st.Message(), tc.field)
			}
			info := errorInfoOf(err)
			if info == nil || info.GetDomain() != ErrorDomain {
				t.Fatalf("no ErrorInfo in %v", st.Details())
			}
			if tc.field == "boot_id" && info.GetReason() != "BOOT_MISMATCH" {
				t.Fatalf("reason %q, want BOOT_MISMATCH", info.GetReason())
			}
		})
	}
	// Nothing failed half-way: only the one listener exists.
	list, err := c.ListListeners(ctx(t), &listenerdv1.ListListenersRequest{})
	if err != nil || len(list.GetListeners()) != 1 {
		t.Fatalf("listeners after failed calls: %v, %v", list.GetListeners(), err)
	}

	// The watcher cap: two allowed, the third is RESOURCE_EXHAUSTED.
	for range 2 {
		s, err := c.WatchEvents(ctx(t), &listenerdv1.WatchEventsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	if err := watch(&listenerdv1.WatchEventsRequest{})(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third watcher: %v", err)
	}
}

func proto64(v uint64) *uint64 { return &v }

// TestSnapshotThenWatch: a client lists, then watches after the listed
// sequence, and sees exactly what happened after the snapshot.
func TestSnapshotThenWatch(t *testing.T) {
	c := newClient(t, events.Options{})
	l := createOK(t, c, "web", echoSpec())
	list, err := c.ListListeners(ctx(t), &listenerdv1.ListListenersRequest{})
	if err != nil || len(list.GetListeners()) != 1 || list.GetSequence() == 0 {
		t.Fatalf("list: %v %v", list, err)
	}
	seq := list.GetSequence()
	stream, err := c.WatchEvents(ctx(t), &listenerdv1.WatchEventsRequest{ListenerIds: []string{"web"}, AfterSequence: &seq})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetHeadSequence() != seq || first.GetBootId() == "" || len(first.GetEvents()) != 0 {
		t.Fatalf("first response %v, %v", first, err)
	}

	conn := testkit.Dial(t, l.GetStatus().GetBoundAddress())
	if _, err := conn.Write([]byte("I am Chuck Norris!")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(conn, make([]byte, 18)); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	var got []*listenerdv1.Event
	for len(got) < 2 {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, resp.GetEvents()...)
	}
	opened, closed := got[0].GetConnectionOpened(), got[1].GetConnectionClosed()
	if opened == nil || closed == nil || got[0].GetSequence() != seq+1 || got[1].GetSequence() != seq+2 {
		t.Fatalf("events %v", got)
	}
	clientPort := uint32(conn.LocalAddr().(*net.TCPAddr).Port)
	if opened.GetTuple().GetRemotePort() != clientPort || opened.GetTuple().GetFamily() != listenerdv1.Family_FAMILY_IPV4 {
		t.Fatalf("tuple %v, client port %d", opened.GetTuple(), clientPort)
	}
	if closed.GetBytesIn() != 18 || closed.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_PEER_CLOSED {
		t.Fatalf("closed %v", closed)
	}
}

func TestUpdateLimitsByMask(t *testing.T) {
	c := newClient(t, events.Options{})
	l := createOK(t, c, "", &listenerdv1.ListenerSpec{Limits: &listenerdv1.Limits{MaxConnections: u32(5), IdleTimeout: durationpb.New(time.Minute)}})
	upd := func(lim *listenerdv1.Limits, paths ...string) *listenerdv1.Limits {
		t.Helper()
		resp, err := c.UpdateListener(ctx(t), &listenerdv1.UpdateListenerRequest{
			Listener:   &listenerdv1.Listener{Id: l.GetId(), Spec: &listenerdv1.ListenerSpec{Limits: lim}},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: paths}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetListener().GetSpec().GetLimits()
	}
	got := upd(&listenerdv1.Limits{MaxConnections: u32(0)}, "spec.limits.max_connections")
	if got.MaxConnections == nil || got.GetMaxConnections() != 0 || got.GetIdleTimeout().AsDuration() != time.Minute {
		t.Fatalf("after setting 0: %v", got)
	}
	got = upd(&listenerdv1.Limits{}, "spec.limits.max_connections") // unset: unlimited
	if got.MaxConnections != nil || got.GetIdleTimeout().AsDuration() != time.Minute {
		t.Fatalf("after clearing: %v", got)
	}
	got = upd(&listenerdv1.Limits{MaxConnections: u32(3)}, "spec.limits") // whole message
	if got.GetMaxConnections() != 3 || got.GetIdleTimeout() != nil {
		t.Fatalf("after replacing: %v", got)
	}
}

func TestCloseListener(t *testing.T) {
	c := newClient(t, events.Options{})
	l := createOK(t, c, "gone", echoSpec())
	resp, err := c.CloseListener(ctx(t), &listenerdv1.CloseListenerRequest{Id: "gone", Force: true})
	if err != nil {
		t.Fatal(err)
	}
	st := resp.GetListener().GetStatus().GetState()
	if st != listenerdv1.State_STATE_DRAINING && st != listenerdv1.State_STATE_CLOSED {
		t.Fatalf("state %v", st)
	}
	// The port and the name are free at once.
	ln, err := net.Listen("tcp", l.GetStatus().GetBoundAddress())
	if err != nil {
		t.Fatalf("port still taken: %v", err)
	}
	ln.Close()
	createOK(t, c, "gone", echoSpec())
}

// A watch the daemon ends because it is shutting down says so in its
// ErrorInfo, like every other error.
func TestWatchEndsWithShuttingDown(t *testing.T) {
	c, _, mgr := newClientConn(t, events.Options{})
	s, err := c.WatchEvents(ctx(t), &listenerdv1.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	mgr.Bus().Close()
	_, err = s.Recv()
	reason := errorInfoOf(err).GetReason()
	if status.Code(err) != codes.Unavailable || reason != "SHUTTING_DOWN" {
		t.Fatalf("watch ended with %v, reason %q; want UNAVAILABLE, SHUTTING_DOWN", err, reason)
	}
}

// An id that is not open (any more) can still be watched: its events may be
// in the history.
func TestWatchIDOfAClosedListener(t *testing.T) {
	c := newClient(t, events.Options{})
	l := createOK(t, c, "gone", echoSpec())
	if _, err := c.CloseListener(ctx(t), &listenerdv1.CloseListenerRequest{Id: l.GetId()}); err != nil {
		t.Fatal(err)
	}
	after := uint64(0)
	s, err := c.WatchEvents(ctx(t), &listenerdv1.WatchEventsRequest{ListenerIds: []string{l.GetId()}, AfterSequence: &after})
	if err != nil {
		t.Fatal(err)
	}
	var started bool
	for !started {
		resp, err := s.Recv()
		if err != nil {
			t.Fatalf("watch of a closed listener's id: %v", err)
		}
		for _, ev := range resp.GetEvents() {
			started = started || ev.GetListenerStarted() != nil
		}
	}
}
