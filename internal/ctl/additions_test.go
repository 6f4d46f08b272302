package ctl

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// rebindFake adds RebindListener to fakeService.
type rebindFake struct {
	*fakeService
	rebind func(context.Context, *listenerdv1.RebindListenerRequest) (*listenerdv1.RebindListenerResponse, error)
}

func (f *rebindFake) RebindListener(ctx context.Context, r *listenerdv1.RebindListenerRequest) (*listenerdv1.RebindListenerResponse, error) {
	return f.rebind(ctx, r)
}

func TestListenRequestSocketAndAdmissionFlags(t *testing.T) {
	tests := []struct {
		args []string
		want *listenerdv1.ListenerSpec
	}{
		{
			[]string{"--accept-rate", "2.5", "--accept-burst", "5", "--max-per-source", "3"},
			&listenerdv1.ListenerSpec{Limits: &listenerdv1.Limits{AcceptRate: 2.5, AcceptBurst: 5, MaxConnectionsPerSource: u32(3)}},
		},
		{
			// 0 per source is no limit: the field stays unset.
			[]string{"--max-per-source", "0"},
			&listenerdv1.ListenerSpec{},
		},
		{
			[]string{"--no-delay=false", "--keepalive", "1m"},
			&listenerdv1.ListenerSpec{NoDelay: new(false), Keepalive: durationpb.New(time.Minute)},
		},
		{
			[]string{"--no-delay", "--keepalive", "0"},
			&listenerdv1.ListenerSpec{NoDelay: new(true), Keepalive: durationpb.New(0)},
		},
	}
	for _, tt := range tests {
		var o listenOptions
		fs := pflag.NewFlagSet("listen", pflag.ContinueOnError)
		o.addFlags(fs)
		if err := fs.Parse(tt.args); err != nil {
			t.Fatal(err)
		}
		got, err := o.request(fs)
		if err != nil {
			t.Fatalf("%v: %v", tt.args, err)
		}
		assertProto(t, got, &listenerdv1.CreateListenerRequest{Spec: tt.want})
	}
	for _, args := range [][]string{{"--accept-rate", "-1"}, {"--keepalive", "-1s"}} {
		var o listenOptions
		fs := pflag.NewFlagSet("listen", pflag.ContinueOnError)
		o.addFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		_, err := o.request(fs)
		assertUsage(t, err)
	}
}

func TestLimitRequestAdmissionFlags(t *testing.T) {
	tests := []struct {
		args   []string
		limits *listenerdv1.Limits
		paths  []string
	}{
		{
			[]string{"--accept-rate", "10", "--accept-burst", "20", "--max-per-source", "2"},
			&listenerdv1.Limits{AcceptRate: 10, AcceptBurst: 20, MaxConnectionsPerSource: u32(2)},
			[]string{"spec.limits.accept_rate", "spec.limits.accept_burst", "spec.limits.max_connections_per_source"},
		},
		{
			// 0 removes each limit: the paths are named, the fields unset.
			[]string{"--accept-rate", "0", "--max-per-source", "0"},
			&listenerdv1.Limits{},
			[]string{"spec.limits.accept_rate", "spec.limits.max_connections_per_source"},
		},
	}
	for _, tt := range tests {
		var o limitOptions
		fs := pflag.NewFlagSet("limit", pflag.ContinueOnError)
		o.addFlags(fs)
		if err := fs.Parse(tt.args); err != nil {
			t.Fatal(err)
		}
		got, err := o.request("web", fs)
		if err != nil {
			t.Fatalf("%v: %v", tt.args, err)
		}
		assertProto(t, got, &listenerdv1.UpdateListenerRequest{
			Listener:   &listenerdv1.Listener{Id: "web", Spec: &listenerdv1.ListenerSpec{Limits: tt.limits}},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: tt.paths},
		})
	}
	if got := limitsLine(&listenerdv1.Limits{AcceptRate: 10, AcceptBurst: 20, MaxConnectionsPerSource: u32(2)}); got !=
		"max-connections=unlimited overflow=reject idle-timeout=none max-lifetime=none accept-rate=10/s accept-burst=20 max-per-source=2" {
		t.Errorf("limitsLine = %q", got)
	}
	if got := limitsLine(&listenerdv1.Limits{AcceptBurst: 5}); got !=
		"max-connections=unlimited overflow=reject idle-timeout=none max-lifetime=none accept-burst=5 (kept; no accept-rate to apply it to)" {
		t.Errorf("limitsLine of a burst with no rate = %q", got)
	}
}

func TestRebindCommand(t *testing.T) {
	var rec recorder
	svc := &rebindFake{fakeService: &fakeService{}, rebind: func(_ context.Context, r *listenerdv1.RebindListenerRequest) (*listenerdv1.RebindListenerResponse, error) {
		rec.set(r)
		if r.GetId() == "nope" {
			return nil, status.Error(codes.NotFound, `listener "nope" not found`)
		}
		if r.GetId() == "busy" {
			return nil, status.Error(codes.FailedPrecondition, "address in use: listen tcp 127.0.0.1:6969: bind: address already in use")
		}
		return &listenerdv1.RebindListenerResponse{Listener: &listenerdv1.Listener{Id: "ln-1a2b3c4d", Name: "web",
			Status: &listenerdv1.ListenerStatus{State: listenerdv1.State_STATE_LISTENING, BoundAddress: "127.0.0.1:6969"}}}, nil
	}}
	sock := startFake(t, svc)

	r := runCtl(t, sock, "rebind", "web")
	if r.code != ExitOK || r.stdout != "listening on 127.0.0.1:6969 (id ln-1a2b3c4d, rebound)\n" {
		t.Errorf("rebind: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	assertProto(t, rec.get(), &listenerdv1.RebindListenerRequest{Id: "web"})
	r = runCtl(t, sock, "rebind", "web", "-o", "json")
	if r.code != ExitOK || !strings.HasPrefix(r.stdout, `{"id":"ln-1a2b3c4d"`) || strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("rebind json: exit %d, stdout %q", r.code, r.stdout)
	}
	r = runCtl(t, sock, "rebind", "nope")
	if r.code != ExitNotFound || r.stderr != "ctl: listener \"nope\" not found\n" {
		t.Errorf("rebind nope: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCtl(t, sock, "rebind", "busy")
	if r.code != ExitError || !strings.Contains(r.stderr, "address already in use") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("rebind busy: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCtl(t, sock, "rebind")
	if r.code != ExitUsage {
		t.Errorf("rebind without id: exit %d, stderr %q", r.code, r.stderr)
	}
}

// eventLog records what a fake saw, from its handlers' goroutines.
type eventLog struct {
	mu   sync.Mutex
	what []string
}

func (l *eventLog) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.what = append(l.what, s)
}

func (l *eventLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.what, ";")
}

// closeWaitFake answers a watch with its head, records whether CloseListener
// came after the watch was registered, and then sends listener_closed.
func closeWaitFake(order *eventLog) *fakeService {
	closedc := make(chan struct{}, 1)
	var rec recorder
	return &fakeService{
		closeL: func(_ context.Context, r *listenerdv1.CloseListenerRequest) (*listenerdv1.CloseListenerResponse, error) {
			rec.set(r)
			order.add("close")
			closedc <- struct{}{}
			return &listenerdv1.CloseListenerResponse{Listener: &listenerdv1.Listener{Id: "ln-1",
				Status: &listenerdv1.ListenerStatus{State: listenerdv1.State_STATE_DRAINING, ActiveConnections: 2}}}, nil
		},
		watch: func(r *listenerdv1.WatchEventsRequest, s grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
			order.add("watch " + strings.Join(r.GetListenerIds(), ","))
			if err := send(s, 7, "b1"); err != nil {
				return err
			}
			select {
			case <-closedc:
			case <-s.Context().Done():
				return nil
			}
			return s.Send(&listenerdv1.WatchEventsResponse{BootId: "b1", Events: []*listenerdv1.Event{{
				Sequence: 9, ListenerId: "ln-1", BootId: "b1",
				Kind: &listenerdv1.Event_ListenerClosed{ListenerClosed: &listenerdv1.ListenerClosed{Drained: 1, Destroyed: 1}},
			}}})
		},
	}
}

func TestCloseWait(t *testing.T) {
	var order eventLog
	svc := closeWaitFake(&order)
	sock := startFake(t, svc)

	r := runCtl(t, sock, "close", "web", "--drain", "5s", "--wait")
	if r.code != ExitOK || r.stdout != "closed ln-1 (draining 2 connections)\nln-1 closed: 1 connection drained, 1 destroyed\n" {
		t.Fatalf("close --wait: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if got := order.String(); got != "watch web;close" {
		t.Errorf("order %q: the watch must be registered before the close", got)
	}
	reqs := svc.watchRequests()
	if got := reqs[0].GetKinds(); len(got) != 1 || got[0] != listenerdv1.EventKind_EVENT_KIND_LISTENER_CLOSED {
		t.Errorf("watch kinds %v", got)
	}

	r = runCtl(t, sock, "close", "web", "--force", "--wait", "-o", "json")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != ExitOK || len(lines) != 2 || !strings.HasPrefix(lines[0], `{"id":"ln-1"`) || !strings.Contains(lines[1], `"listenerClosed"`) {
		t.Errorf("close --wait -o json: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestCloseWaitNotFound(t *testing.T) {
	svc := &fakeService{
		closeL: func(context.Context, *listenerdv1.CloseListenerRequest) (*listenerdv1.CloseListenerResponse, error) {
			return nil, status.Error(codes.NotFound, `listener "nope" not found`)
		},
		watch: func(_ *listenerdv1.WatchEventsRequest, s grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
			if err := send(s, 1, "b1"); err != nil {
				return err
			}
			<-s.Context().Done()
			return nil
		},
	}
	sock := startFake(t, svc)
	r := runCtl(t, sock, "close", "nope", "--wait")
	if r.code != ExitNotFound || r.stderr != "ctl: listener \"nope\" not found\n" || r.stdout != "" {
		t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestWatchDataFlags(t *testing.T) {
	svc := &fakeService{watch: func(_ *listenerdv1.WatchEventsRequest, s grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
		return send(s, 1, "b1", &listenerdv1.Event{Sequence: 2, ListenerId: "ln-1", BootId: "b1",
			Kind: &listenerdv1.Event_ConnectionData{ConnectionData: &listenerdv1.ConnectionData{
				ConnectionId: "ln-1.1", Direction: listenerdv1.Direction_DIRECTION_IN, Data: []byte("hi"), Length: 2}}})
	}}
	sock := startFake(t, svc)
	tests := []struct {
		args    []string
		data    bool
		dataMax uint32
		kinds   int
	}{
		{[]string{"watch"}, false, 0, 0},
		{[]string{"watch", "--data"}, true, 0, 0},
		{[]string{"watch", "--data-max", "1024"}, true, 1024, 0},
		{[]string{"watch", "--data", "--kind", "connection_opened"}, true, 0, 2},
		{[]string{"watch", "--kind", "connection_data"}, true, 0, 1},
	}
	for i, tt := range tests {
		r := runCtl(t, sock, tt.args...)
		if r.code != ExitOK {
			t.Fatalf("%v: exit %d, stderr %q", tt.args, r.code, r.stderr)
		}
		req := svc.watchRequests()[i]
		if req.GetIncludeData() != tt.data || req.GetDataMaxBytes() != tt.dataMax || len(req.GetKinds()) != tt.kinds {
			t.Errorf("%v: request %v", tt.args, req)
		}
		if tt.data && r.stdout != "seq=2 ln-1 connection_data c=ln-1.1 in len=2 data=\"hi\"\n" {
			t.Errorf("%v: stdout %q", tt.args, r.stdout)
		}
	}
	for _, args := range [][]string{{"watch", "--data-max", "0"}, {"watch", "--data-max", "70000"}, {"watch", "--data=false", "--data-max", "9"}} {
		if r := runCtl(t, sock, args...); r.code != ExitUsage {
			t.Errorf("%v: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
}

func TestCompletion(t *testing.T) {
	svc := &fakeService{
		list: func(context.Context, *listenerdv1.ListListenersRequest) (*listenerdv1.ListListenersResponse, error) {
			return &listenerdv1.ListListenersResponse{Listeners: []*listenerdv1.Listener{
				{Id: "ln-00000001", Name: "web", Status: &listenerdv1.ListenerStatus{State: listenerdv1.State_STATE_LISTENING, BoundAddress: "127.0.0.1:80", ActiveConnections: 1}},
				{Id: "ln-00000002", Status: &listenerdv1.ListenerStatus{State: listenerdv1.State_STATE_FAILED}, Spec: &listenerdv1.ListenerSpec{Port: 6969}},
			}}, nil
		},
		conns: func(_ context.Context, r *listenerdv1.ListConnectionsRequest) (*listenerdv1.ListConnectionsResponse, error) {
			return &listenerdv1.ListConnectionsResponse{Connections: []*listenerdv1.Connection{{Id: r.GetListenerId() + ".4", Tuple: tuple(5000)}}}, nil
		},
	}
	sock := startFake(t, svc)
	complete := func(args ...string) []string {
		t.Helper()
		r := runCtl(t, sock, append([]string{"__complete"}, args...)...)
		if r.code != ExitOK {
			t.Fatalf("__complete %v: exit %d, stderr %q", args, r.code, r.stderr)
		}
		var words []string
		for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			if !strings.HasPrefix(l, ":") {
				words = append(words, strings.SplitN(l, "\t", 2)[0])
			}
		}
		return words
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"get", ""}, "ln-00000001 web ln-00000002"},
		{[]string{"get", "w"}, "web"},
		{[]string{"get", "web", ""}, ""},
		{[]string{"watch", "web", ""}, "ln-00000001 ln-00000002"},
		{[]string{"limit", ""}, "ln-00000001 web"},
		{[]string{"rebind", ""}, "ln-00000002"},
		{[]string{"kick", ""}, "ln-00000001."},
		{[]string{"kick", "ln-00000001."}, "ln-00000001.4"},
		{[]string{"listen", "--mode", ""}, "discard echo forward"},
		{[]string{"watch", "--kind", "listener_c"}, "listener_started connection_opened connection_closed connection_rejected accept_error limits_changed listener_closed connection_half_closed connection_data connection_queued"},
		{[]string{"ls", "-o", ""}, "text wide json"},
	} {
		if got := strings.Join(complete(tt.args...), " "); got != tt.want {
			t.Errorf("complete %q = %q, want %q", tt.args, got, tt.want)
		}
	}

	// Without a daemon, completion offers nothing and says nothing.
	r := runCtl(t, "/nonexistent/ctl.sock", "__complete", "get", "")
	if r.code != ExitOK || r.stdout != ":4\n" {
		t.Errorf("no daemon: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runCtl(t, sock, "completion", "bash")
	if r.code != ExitOK || !strings.Contains(r.stdout, "__start_ctl") {
		t.Errorf("completion bash: exit %d, stderr %q", r.code, r.stderr)
	}
}

// Every command and subcommand, completion's included, shows an example.
func TestEveryHelpHasAnExample(t *testing.T) {
	root := newApp(nil, nil).rootCmd()
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if !c.Hidden && strings.TrimSpace(c.Example) == "" {
			t.Errorf("%q has no Example", c.CommandPath())
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	r := runCtl(t, "/nonexistent.sock", "rebind", "--help")
	if r.code != ExitOK || !strings.Contains(r.stdout, "Examples:\n  ctl ls") {
		t.Errorf("rebind --help: exit %d, stdout %q", r.code, r.stdout)
	}
}
