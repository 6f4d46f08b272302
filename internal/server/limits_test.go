package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// Headers are capped like messages: a call whose metadata is over 64 KiB
// is refused before anything reads it, on either transport.
func TestHeadersAreCapped(t *testing.T) {
	d := startRun(t, Config{Ephemeral: true})
	h := healthpb.NewHealthClient(testkit.DialGRPCUnix(t, d.socket))
	for _, tc := range []struct {
		size int
		ok   bool
	}{{1 << 10, true}, {MaxHeaderBytes + 1, false}, {1 << 20, false}} {
		ctx := metadata.AppendToOutgoingContext(testContext(t), "x-filler", strings.Repeat("x", tc.size))
		_, err := h.Check(ctx, &healthpb.HealthCheckRequest{})
		if (err == nil) != tc.ok {
			t.Errorf("health check with %d bytes of metadata: %v, want ok=%v", tc.size, err, tc.ok)
		}
	}
	// The connection is still good for the next call.
	if _, err := h.Check(testContext(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health check after: %v", err)
	}
}

// The TCP API serves at most MaxConns client connections at once: when
// every one is authenticated, one more waits in the kernel's queue until
// another goes.
func TestTCPConnectionsAreCapped(t *testing.T) {
	p := newPKI(t)
	d := startRun(t, Config{Ephemeral: true, API: APIConfig{Listen: "127.0.0.1:0", TokenFile: p.tokenFile, MaxConns: 1}})
	holder := d.dial(t, insecure.NewCredentials())
	authed := metadata.AppendToOutgoingContext(testContext(t), "authorization", "Bearer "+p.token)
	if _, err := listenerdv1.NewListenerServiceClient(holder).ListListeners(authed, &listenerdv1.ListListenersRequest{}); err != nil {
		t.Fatal(err) // authenticated: the connection keeps the one slot
	}
	h := healthpb.NewHealthClient(d.dial(t, insecure.NewCredentials()))
	// Cannot be served while the slot is held, however long it waits: the
	// deadline only bounds the test.
	ctx, cancel := context.WithTimeout(testContext(t), 2*time.Second)
	_, err := h.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	cancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("health check while the slot is held: %v, want it still waiting at its deadline", err)
	}
	holder.Close()
	if _, err := h.Check(testContext(t), &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("health check once the slot is free: %v", err)
	}
}
