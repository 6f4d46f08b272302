package server

import (
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// BenchmarkAPI times single calls through the whole daemon (interceptors,
// service, engine) over its unix socket, with the client in the same
// process: bench case f's CreateListener and CloseListener next to a read
// and a no-op, without a second process's scheduling in the way.
//
//	go test -run '^$' -bench API -count 3 -benchtime 2000x ./internal/server
func BenchmarkAPI(b *testing.B) {
	d := startRun(b, Config{Ephemeral: true}) // no mutation rate limit
	conn := testkit.DialGRPCUnix(b, d.socket)
	api := listenerdv1.NewListenerServiceClient(conn)
	ctx := testContext(b)
	spec := &listenerdv1.ListenerSpec{Host: "127.0.0.1"}
	create := func(b *testing.B) string {
		resp, err := api.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Spec: spec})
		if err != nil {
			b.Fatal(err)
		}
		return resp.GetListener().GetId()
	}
	closeL := func(b *testing.B, id string) {
		if _, err := api.CloseListener(ctx, &listenerdv1.CloseListenerRequest{Id: id, Force: true}); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("create", func(b *testing.B) {
		ids := make([]string, 0, b.N)
		for b.Loop() {
			ids = append(ids, create(b))
		}
		b.StopTimer()
		for _, id := range ids {
			closeL(b, id)
		}
	})
	b.Run("close", func(b *testing.B) {
		ids := make([]string, b.N)
		for i := range ids {
			ids[i] = create(b)
		}
		b.ResetTimer()
		for _, id := range ids {
			closeL(b, id)
		}
	})
	b.Run("get", func(b *testing.B) {
		id := create(b)
		defer closeL(b, id)
		for b.Loop() {
			if _, err := api.GetListener(ctx, &listenerdv1.GetListenerRequest{Id: id}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("health", func(b *testing.B) {
		h := healthpb.NewHealthClient(conn)
		for b.Loop() {
			if _, err := h.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
