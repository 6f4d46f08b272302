package ctl

import (
	"context"
	"strings"
	"testing"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

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
		{[]string{"listen", "--mode", ""}, "discard echo forward stream"},
		{[]string{"watch", "--kind", "listener_c"}, "listener_started connection_opened connection_closed connection_rejected accept_error limits_changed listener_closed connection_half_closed connection_data connection_queued handler_attached handler_detached connection_taken fault_added fault_removed fault_applied listener_reconciled"},
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
