package metrics

import (
	"context"
	"testing"
	"time"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
)

// BenchmarkGather is one scrape of a daemon with 200 listeners, each with
// a duration histogram: what a Prometheus scrape costs the daemon.
func BenchmarkGather(b *testing.B) {
	m := New()
	bus := events.NewBus(events.Options{})
	mgr := listener.NewManager(bus, nil, listener.Options{ConnClosed: m.ObserveConnection})
	defer mgr.Shutdown(0)
	m.Collect(mgr, bus)
	for range 200 {
		l, err := mgr.Create(context.Background(), "", listener.Spec{Limits: listener.Limits{}})
		if err != nil {
			b.Fatal(err)
		}
		m.ObserveConnection(l.ID(), time.Second)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := m.Registry().Gather(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkObserveConnection is the cost the duration histogram adds to
// each connection's end.
func BenchmarkObserveConnection(b *testing.B) {
	m := New()
	m.ObserveConnection("ln-00000001", time.Millisecond)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.ObserveConnection("ln-00000001", time.Millisecond)
		}
	})
}
