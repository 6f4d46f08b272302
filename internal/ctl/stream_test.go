package ctl

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

func TestSplitExec(t *testing.T) {
	for _, tt := range []struct {
		args, ctl, cmd []string
	}{
		{[]string{"serve", "web", "--exec", "sh", "-c", "echo $X", "--verbose"},
			[]string{"serve", "web", "--exec", "sh"}, []string{"-c", "echo $X", "--verbose"}},
		{[]string{"--socket", "s", "serve", "web", "--exec=cat", "-u"}, []string{"--socket", "s", "serve", "web", "--exec=cat"}, []string{"-u"}},
		{[]string{"serve", "web", "--concurrency", "2", "--exec", "cat"}, []string{"serve", "web", "--concurrency", "2", "--exec", "cat"}, []string{}},
		{[]string{"serve", "web", "--exec"}, []string{"serve", "web", "--exec"}, nil},
		{[]string{"serve", "--", "web", "--exec", "x", "-c"}, []string{"serve", "--", "web", "--exec", "x", "-c"}, nil},
		{[]string{"serve", "web"}, []string{"serve", "web"}, nil},
	} {
		ctl, cmd := splitExec(tt.args)
		if !slices.Equal(ctl, tt.ctl) || !slices.Equal(cmd, tt.cmd) || (cmd == nil) != (tt.cmd == nil) {
			t.Errorf("splitExec(%q) = %q, %q; want %q, %q", tt.args, ctl, cmd, tt.ctl, tt.cmd)
		}
	}
}

// Mistakes on attach's and serve's command lines are usage errors, one
// line each, found before the daemon is asked anything.
func TestAttachAndServeFlagErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"attach"}, "missing a listener id or name"},
		{[]string{"attach", "a", "b"}, "too many arguments"},
		{[]string{"attach", "web", "--exec", "cat"}, "unknown flag: --exec"},
		{[]string{"serve"}, "missing a listener id or name"},
		{[]string{"serve", "web"}, "missing --exec CMD"},
		{[]string{"serve", "web", "--exec="}, "--exec needs a command"},
		{[]string{"serve", "web", "--exec"}, "flag needs an argument: --exec"},
		{[]string{"serve", "--exec", "cat", "web"}, "missing a listener id or name: it goes before --exec"},
		{[]string{"serve", "web", "other", "--exec", "cat"}, "too many arguments"},
		{[]string{"serve", "web", "--concurrency", "0", "--exec", "cat"}, "--concurrency must be 1-65535"},
		{[]string{"serve", "web", "--concurrency", "65536", "--exec", "cat"}, "--concurrency must be 1-65535"},
		{[]string{"serve", "web", "--concurrency", "many", "--exec", "cat"}, `invalid value "many" for --concurrency: want a whole number`},
		{[]string{"serve", "web", "--grace", "-1s", "--exec", "cat"}, "--grace must not be negative"},
		{[]string{"serve", "web", "--grace", "soon", "--exec", "cat"}, `invalid value "soon" for --grace: want a duration`},
		{[]string{"serve", "web", "--exec", "no-such-command-4a1b"}, "--exec no-such-command-4a1b: executable file not found in $PATH"},
	} {
		r := runCtl(t, "/nonexistent.sock", tt.args...)
		if r.code != ExitUsage || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("ctl %q: exit %d, stderr %q; want a usage error with %q", tt.args, r.code, r.stderr, tt.want)
		}
	}
}

// attachFake answers AttachHandler with err at once, or, with attached,
// acknowledges the attach and then returns then (nil: waits for the caller
// to go), recording the requests.
type attachFake struct {
	mu   sync.Mutex
	reqs []*listenerdv1.AttachHandlerRequest
}

func (f *attachFake) requests() []*listenerdv1.AttachHandlerRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.reqs)
}

func (f *attachFake) service(err error, attached bool, then error) *fakeService {
	return &fakeService{
		attach: func(r *listenerdv1.AttachHandlerRequest, s grpc.ServerStreamingServer[listenerdv1.AttachHandlerResponse]) error {
			f.mu.Lock()
			f.reqs = append(f.reqs, r)
			f.mu.Unlock()
			if !attached {
				return err
			}
			if err := s.Send(&listenerdv1.AttachHandlerResponse{Kind: &listenerdv1.AttachHandlerResponse_Attached{
				Attached: &listenerdv1.Attached{HandlerId: "h-1", ListenerId: "ln-00000001"}}}); err != nil {
				return err
			}
			if then != nil {
				return then
			}
			<-s.Context().Done()
			return s.Context().Err()
		},
		get: func(context.Context, *listenerdv1.GetListenerRequest) (*listenerdv1.GetListenerResponse, error) {
			return &listenerdv1.GetListenerResponse{Listener: &listenerdv1.Listener{Id: "ln-00000001",
				Status: &listenerdv1.ListenerStatus{BoundAddress: "127.0.0.1:7000"}}}, nil
		},
	}
}

// attach asks for one connection at a time, serve for --concurrency, each
// with a label naming what it is; the daemon's refusals keep their exit
// codes.
func TestAttachAndServeRequests(t *testing.T) {
	f := &attachFake{}
	sock := startFake(t, f.service(status.Error(codes.NotFound, `listener "web" not found`), false, nil))
	r := runCtl(t, sock, "attach", "web")
	if r.code != ExitNotFound || r.stderr != "ctl: listener \"web\" not found\n" {
		t.Errorf("attach: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCtl(t, sock, "serve", "web", "--concurrency", "3", "--exec", "sh", "-c", "echo $TCPREMOTEPORT")
	if r.code != ExitNotFound {
		t.Errorf("serve: exit %d, stderr %q", r.code, r.stderr)
	}
	reqs := f.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d attach requests", len(reqs))
	}
	for i, want := range []struct {
		max   uint32
		label string
	}{{1, "ctl attach, pid "}, {3, "ctl serve sh, pid "}} {
		if q := reqs[i]; q.GetListenerId() != "web" || q.GetMaxConnections() != want.max || !strings.HasPrefix(q.GetLabel(), want.label) {
			t.Errorf("request %d: %v", i, q)
		}
	}

	sock = startFake(t, (&attachFake{}).service(status.Error(codes.FailedPrecondition,
		"listener ln-00000001: the listener's handler is not stream (it is echo)"), false, nil))
	for _, args := range [][]string{{"attach", "web"}, {"serve", "web", "--exec", "cat"}} {
		r = runCtl(t, sock, args...)
		if r.code != ExitError || !strings.HasSuffix(r.stderr, "the listener's handler is not stream (it is echo)\n") {
			t.Errorf("%q on a listener that is not stream: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
}

// When the listener closes while attach waits, attach fails (it served
// nothing), attach --keep and serve end with 0.
func TestAttachAndServeListenerClosed(t *testing.T) {
	st, err := status.New(codes.FailedPrecondition, "listener ln-00000001 is closing: not listening").
		WithDetails(&errdetails.ErrorInfo{Reason: "NOT_LISTENING", Domain: "listenerd.v1"})
	if err != nil {
		t.Fatal(err)
	}
	sock := startFake(t, (&attachFake{}).service(nil, true, st.Err()))
	for _, tt := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"attach", "web"}, ExitError, "ctl: listener ln-00000001 closed before a connection came\n"},
		{[]string{"attach", "web", "--keep"}, ExitOK, "ctl: listener ln-00000001 closed\n"},
		{[]string{"serve", "web", "--exec", "cat"}, ExitOK, "ctl: listener ln-00000001 closed\n"},
	} {
		r := runCtl(t, sock, tt.args...)
		if r.code != tt.code || !strings.HasSuffix(r.stderr, tt.stderr) {
			t.Errorf("%q: exit %d, stderr %q; want %d and %q", tt.args, r.code, r.stderr, tt.code, tt.stderr)
		}
	}
}

// Ctrl-C while attach or serve waits for a connection exits 0, detached.
func TestAttachAndServeInterrupted(t *testing.T) {
	sock := startFake(t, (&attachFake{}).service(nil, true, nil))
	for args, ready := range map[string]string{
		"attach web":           "waiting for a connection",
		"serve web --exec cat": "serving ln-00000001 with cat, 16 at once, as handler h-1",
		"attach web --keep":    "attached to ln-00000001 as handler h-1",
	} {
		ctx, cancel := context.WithCancel(context.Background())
		var stdout, stderr testkit.Buffer
		stderr.OnOutput(ready, cancel)
		code := runCtlWith(ctx, sock, &stdout, &stderr, strings.Fields(args)...)
		cancel()
		if code != ExitOK || !strings.Contains(stderr.String(), ready) || stdout.String() != "" {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", args, code, stdout.String(), stderr.String())
		}
	}
}
