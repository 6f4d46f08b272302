package service

import (
	"context"
	"fmt"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
)

func upgradeClient(t *testing.T, up Upgrader) listenerdv1.ListenerServiceClient {
	t.Helper()
	mgr := listener.NewManager(events.NewBus(events.Options{}), nil, listener.Options{})
	svc := New(mgr, nil)
	if up != nil {
		svc.ServeUpgrades(up)
	}
	srv := grpc.NewServer(ServerOption())
	listenerdv1.RegisterListenerServiceServer(srv, svc)
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
		srv.Stop()
		mgr.Shutdown(0)
	})
	return listenerdv1.NewListenerServiceClient(conn)
}

func TestUpgradeDaemonCodes(t *testing.T) {
	var asked []string
	up := func(_ context.Context, binary string) (Upgraded, error) {
		asked = append(asked, binary)
		switch len(asked) {
		case 1:
			return Upgraded{PID: 42, Binary: "/bin/listenerd", BootID: "b", Head: 7, Listeners: 2, Draining: 3}, nil
		case 2:
			return Upgraded{}, fmt.Errorf("the new listenerd exited: exit status 1: %w", ErrUpgradeFailed)
		}
		return Upgraded{}, ErrUpgradeBusy
	}
	c := upgradeClient(t, up)
	resp, err := c.UpgradeDaemon(ctx(t), &listenerdv1.UpgradeDaemonRequest{})
	if err != nil || resp.GetPid() != 42 || resp.GetHeadSequence() != 7 || resp.GetListeners() != 2 || resp.GetDrainingConnections() != 3 || resp.GetBootId() != "b" {
		t.Fatalf("upgrade: %v, %v", resp, err)
	}
	for _, want := range []codes.Code{codes.FailedPrecondition, codes.Aborted} {
		if _, err := c.UpgradeDaemon(ctx(t), &listenerdv1.UpgradeDaemonRequest{}); status.Code(err) != want {
			t.Fatalf("got %v, want %v", err, want)
		}
	}
	// bufconn is not the unix socket: no binary may be named over it.
	if _, err := c.UpgradeDaemon(ctx(t), &listenerdv1.UpgradeDaemonRequest{Binary: "/tmp/x"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("binary over a non-unix transport: %v", err)
	}
	if len(asked) != 3 {
		t.Fatalf("upgrader called %d times", len(asked))
	}
	if _, err := upgradeClient(t, nil).UpgradeDaemon(ctx(t), &listenerdv1.UpgradeDaemonRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("without an upgrader: %v", err)
	}
}
