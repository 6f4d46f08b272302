package ctl

import (
	"net"
	"path/filepath"
	"testing"

	"google.golang.org/grpc"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/service"
	"github.com/listenerd/listenerd/internal/testkit"
)

// testDaemon is a real listenerd in the test's process: the listener
// engine, the event bus and the gRPC service, served on a unix socket.
type testDaemon struct {
	sock string
	mgr  *listener.Manager
	stop func()
}

// startDaemon serves a real daemon on a fresh unix socket; it stops with
// the test.
func startDaemon(t *testing.T) *testDaemon {
	t.Helper()
	d := serveDaemon(t, filepath.Join(testkit.ShortDir(t), "api.sock"))
	t.Cleanup(d.stop)
	return d
}

// serveDaemon serves a real daemon (a new boot) on sock; stop ends it as
// the daemon does at shutdown: watch streams end, the server stops, the
// listeners close. stop may be called more than once.
func serveDaemon(t *testing.T, sock string) *testDaemon {
	t.Helper()
	mgr := listener.NewManager(events.NewBus(events.Options{}), nil, listener.Options{})
	lis, err := net.Listen("unix", sock)
	if err != nil {
		mgr.Shutdown(0)
		t.Fatal(err)
	}
	srv := grpc.NewServer(service.ServerOption())
	listenerdv1.RegisterListenerServiceServer(srv, service.New(mgr, nil))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	stopped := false
	return &testDaemon{sock: sock, mgr: mgr, stop: func() {
		if stopped {
			return
		}
		stopped = true
		mgr.Bus().Close()
		srv.Stop()
		<-done
		mgr.Shutdown(0)
	}}
}
