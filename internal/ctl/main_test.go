package ctl

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/fleet/natstest"
	"github.com/listenerd/listenerd/internal/testkit"
)

func TestMain(m *testing.M) {
	// No test reads the user's contexts file; the contexts tests name
	// their own.
	if err := os.Setenv(CtlConfigEnv, "/nonexistent/listenerd/ctl.yaml"); err != nil {
		panic(err)
	}
	goleak.VerifyTestMain(m, natstest.Leaks...)
}

// fakeService is a ListenerService whose RPCs are whatever a test sets; an
// unset one answers UNIMPLEMENTED.
type fakeService struct {
	listenerdv1.UnimplementedListenerServiceServer

	create  func(context.Context, *listenerdv1.CreateListenerRequest) (*listenerdv1.CreateListenerResponse, error)
	get     func(context.Context, *listenerdv1.GetListenerRequest) (*listenerdv1.GetListenerResponse, error)
	list    func(context.Context, *listenerdv1.ListListenersRequest) (*listenerdv1.ListListenersResponse, error)
	update  func(context.Context, *listenerdv1.UpdateListenerRequest) (*listenerdv1.UpdateListenerResponse, error)
	closeL  func(context.Context, *listenerdv1.CloseListenerRequest) (*listenerdv1.CloseListenerResponse, error)
	conns   func(context.Context, *listenerdv1.ListConnectionsRequest) (*listenerdv1.ListConnectionsResponse, error)
	kick    func(context.Context, *listenerdv1.CloseConnectionRequest) (*listenerdv1.CloseConnectionResponse, error)
	watch   func(*listenerdv1.WatchEventsRequest, grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error
	attach  func(*listenerdv1.AttachHandlerRequest, grpc.ServerStreamingServer[listenerdv1.AttachHandlerResponse]) error
	watchMu sync.Mutex
	watches []*listenerdv1.WatchEventsRequest
}

func (f *fakeService) CreateListener(ctx context.Context, r *listenerdv1.CreateListenerRequest) (*listenerdv1.CreateListenerResponse, error) {
	if f.create == nil {
		return f.UnimplementedListenerServiceServer.CreateListener(ctx, r)
	}
	return f.create(ctx, r)
}

func (f *fakeService) GetListener(ctx context.Context, r *listenerdv1.GetListenerRequest) (*listenerdv1.GetListenerResponse, error) {
	if f.get == nil {
		return f.UnimplementedListenerServiceServer.GetListener(ctx, r)
	}
	return f.get(ctx, r)
}

func (f *fakeService) ListListeners(ctx context.Context, r *listenerdv1.ListListenersRequest) (*listenerdv1.ListListenersResponse, error) {
	if f.list == nil {
		return f.UnimplementedListenerServiceServer.ListListeners(ctx, r)
	}
	return f.list(ctx, r)
}

func (f *fakeService) UpdateListener(ctx context.Context, r *listenerdv1.UpdateListenerRequest) (*listenerdv1.UpdateListenerResponse, error) {
	if f.update == nil {
		return f.UnimplementedListenerServiceServer.UpdateListener(ctx, r)
	}
	return f.update(ctx, r)
}

func (f *fakeService) CloseListener(ctx context.Context, r *listenerdv1.CloseListenerRequest) (*listenerdv1.CloseListenerResponse, error) {
	if f.closeL == nil {
		return f.UnimplementedListenerServiceServer.CloseListener(ctx, r)
	}
	return f.closeL(ctx, r)
}

func (f *fakeService) ListConnections(ctx context.Context, r *listenerdv1.ListConnectionsRequest) (*listenerdv1.ListConnectionsResponse, error) {
	if f.conns == nil {
		return f.UnimplementedListenerServiceServer.ListConnections(ctx, r)
	}
	return f.conns(ctx, r)
}

func (f *fakeService) CloseConnection(ctx context.Context, r *listenerdv1.CloseConnectionRequest) (*listenerdv1.CloseConnectionResponse, error) {
	if f.kick == nil {
		return f.UnimplementedListenerServiceServer.CloseConnection(ctx, r)
	}
	return f.kick(ctx, r)
}

func (f *fakeService) WatchEvents(r *listenerdv1.WatchEventsRequest, s grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
	f.watchMu.Lock()
	f.watches = append(f.watches, r)
	f.watchMu.Unlock()
	if f.watch == nil {
		return f.UnimplementedListenerServiceServer.WatchEvents(r, s)
	}
	return f.watch(r, s)
}

func (f *fakeService) AttachHandler(r *listenerdv1.AttachHandlerRequest, s grpc.ServerStreamingServer[listenerdv1.AttachHandlerResponse]) error {
	if f.attach == nil {
		return f.UnimplementedListenerServiceServer.AttachHandler(r, s)
	}
	return f.attach(r, s)
}

func (f *fakeService) watchRequests() []*listenerdv1.WatchEventsRequest {
	f.watchMu.Lock()
	defer f.watchMu.Unlock()
	return append([]*listenerdv1.WatchEventsRequest(nil), f.watches...)
}

// startFake serves svc on a unix socket in a temporary directory and returns
// the socket path.
func startFake(t *testing.T, svc listenerdv1.ListenerServiceServer) string {
	t.Helper()
	sock := filepath.Join(testkit.ShortDir(t), "api.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	listenerdv1.RegisterListenerServiceServer(srv, svc)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return sock
}

// fastRetry makes watch resumes quick in tests; it gives up after a count
// of failures, never a time, so that a loaded machine cannot make it give
// up early.
var fastRetry = retryPolicy{initial: time.Millisecond, max: 4 * time.Millisecond, giveUp: testkit.Guard, tries: 5}

type result struct {
	stdout, stderr string
	code           int
}

// runCtl runs ctl against the socket with args, with stdout and stderr given.
func runCtlWith(ctx context.Context, sock string, stdout, stderr *testkit.Buffer, args ...string) int {
	a := newApp(stdout, stderr)
	a.retry = fastRetry
	a.stdin = strings.NewReader("")
	return a.run(ctx, append([]string{"--socket", sock}, args...))
}

// runCtlUntil runs a streaming ctl command until its stdout holds stop,
// then interrupts it, as Ctrl-C does.
func runCtlUntil(sock, stop string, args ...string) (stdout, stderr *testkit.Buffer, code int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout, stderr = &testkit.Buffer{}, &testkit.Buffer{}
	stdout.OnOutput(stop, cancel)
	return stdout, stderr, runCtlWith(ctx, sock, stdout, stderr, args...)
}

// runCtl runs ctl against the socket with args and returns what it printed.
func runCtl(t *testing.T, sock string, args ...string) result {
	t.Helper()
	var stdout, stderr testkit.Buffer
	code := runCtlWith(context.Background(), sock, &stdout, &stderr, args...)
	return result{stdout.String(), stderr.String(), code}
}
