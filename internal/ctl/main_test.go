package ctl

import (
	"bytes"
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
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
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

func (f *fakeService) watchRequests() []*listenerdv1.WatchEventsRequest {
	f.watchMu.Lock()
	defer f.watchMu.Unlock()
	return append([]*listenerdv1.WatchEventsRequest(nil), f.watches...)
}

// shortTempDir returns a temporary directory with a path short enough for a
// unix socket.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startFake serves svc on a unix socket in a temporary directory and returns
// the socket path.
func startFake(t *testing.T, svc listenerdv1.ListenerServiceServer) string {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "api.sock")
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

// syncBuffer is a writer safe for concurrent use that can call a function
// once its content contains a string.
type syncBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	writes  int // Write calls
	trigger string
	fire    func()
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.writes++
	n, err := b.buf.Write(p)
	if b.fire != nil && strings.Contains(b.buf.String(), b.trigger) {
		b.fire()
		b.fire = nil
	}
	return n, err
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *syncBuffer) writeCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.writes
}

// onOutput makes b call fire once its content contains s.
func (b *syncBuffer) onOutput(s string, fire func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.trigger, b.fire = s, fire
}

// fastRetry makes watch resumes quick in tests.
var fastRetry = retryPolicy{initial: time.Millisecond, max: 4 * time.Millisecond, giveUp: 100 * time.Millisecond}

type result struct {
	stdout, stderr string
	code           int
}

// runCtl runs ctl against the socket with args, with stdout and stderr given.
func runCtlWith(ctx context.Context, sock string, stdout, stderr *syncBuffer, args ...string) int {
	a := newApp(stdout, stderr)
	a.retry = fastRetry
	a.stdin = strings.NewReader("")
	return a.run(ctx, append([]string{"--socket", sock}, args...))
}

// runCtlUntil runs a streaming ctl command until its stdout holds stop,
// then interrupts it, as Ctrl-C does.
func runCtlUntil(sock, stop string, args ...string) (stdout, stderr *syncBuffer, code int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stdout, stderr = &syncBuffer{}, &syncBuffer{}
	stdout.onOutput(stop, cancel)
	return stdout, stderr, runCtlWith(ctx, sock, stdout, stderr, args...)
}

// runCtl runs ctl against the socket with args and returns what it printed.
func runCtl(t *testing.T, sock string, args ...string) result {
	t.Helper()
	var stdout, stderr syncBuffer
	code := runCtlWith(context.Background(), sock, &stdout, &stderr, args...)
	return result{stdout.String(), stderr.String(), code}
}
