package listener

import (
	"context"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/state"
)

// BenchmarkAccept measures the accept path: connect and close, counted
// once the daemon side has seen it closed. Compare the sub-benchmarks
// (benchstat, or the ratio of ns/op) to see what watchers cost the accept
// path; "stuck" is a watcher that never reads.
//
//	go test -run '^$' -bench Accept -count 6 ./internal/listener
func BenchmarkAccept(b *testing.B) {
	for _, tc := range []struct {
		name            string
		stuck, readingN int
	}{
		{"watchers=0", 0, 0},
		{"stuck=1", 1, 0},
		{"reading=10", 0, 10},
	} {
		b.Run(tc.name, func(b *testing.B) { benchAccept(b, tc.stuck, tc.readingN) })
	}
}

func benchAccept(b *testing.B, stuck, reading int) {
	bus := events.NewBus(events.Options{})
	m := NewManager(bus, nil, Options{})
	defer m.Shutdown(0)
	l, err := m.Create(context.Background(), "", Spec{Backlog: 4096})
	if err != nil {
		b.Fatal(err)
	}
	for range stuck {
		w, _, err := bus.Watch(events.Filter{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer w.Close()
	}
	ctx, cancel := context.WithCancel(context.Background())
	var readers sync.WaitGroup
	for range reading {
		w, _, err := bus.Watch(events.Filter{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		readers.Add(1)
		go func() {
			defer readers.Done()
			defer w.Close()
			buf := make([]events.Event, 0, 256)
			for {
				if _, _, err := w.Next(ctx, buf); err != nil {
					return
				}
			}
		}()
	}
	defer func() { cancel(); readers.Wait() }()

	addr := l.Info().Bound
	const workers = 8
	b.ResetTimer()
	var wg sync.WaitGroup
	for i := range workers {
		n := b.N / workers
		if i < b.N%workers {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Error(err)
					return
				}
				_ = c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}
		}()
	}
	wg.Wait()
	for l.Info().Accepted < uint64(b.N) || l.Info().Active > 0 {
		if b.Failed() {
			return
		}
		time.Sleep(50 * time.Microsecond) // poll without taking a core from the daemon side
	}
	b.StopTimer()
}

// BenchmarkCreateClose measures a listener's life in the engine, Create
// then Close(force), against net.Listen then Close: what the engine adds
// to bench case f before gRPC does.
//
//	go test -run '^$' -bench CreateClose -count 6 ./internal/listener
func BenchmarkCreateClose(b *testing.B) {
	b.Run("engine", func(b *testing.B) {
		m := NewManager(events.NewBus(events.Options{}), nil, Options{})
		defer m.Shutdown(0)
		spec := Spec{Host: "127.0.0.1"}
		for b.Loop() {
			l, err := m.Create(context.Background(), "", spec)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := m.Close(l.ID(), 0, true); err != nil {
				b.Fatal(err)
			}
		}
	})
	// With the state saved to disk (the daemon's default): each change
	// waits for its save. "saved-8" makes the changes from 8 goroutines at
	// once, which share saves.
	b.Run("saved", func(b *testing.B) { benchSaved(b, 1) })
	b.Run("saved-8", func(b *testing.B) { benchSaved(b, 8) })
	b.Run("raw", func(b *testing.B) {
		for b.Loop() {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			if err := ln.Close(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func benchSaved(b *testing.B, clients int) {
	st, err := state.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	m := NewManager(events.NewBus(events.Options{}), nil, Options{Persister: st})
	defer m.Shutdown(0)
	spec := Spec{Host: "127.0.0.1"}
	life := func() error {
		l, err := m.Create(context.Background(), "", spec)
		if err == nil {
			_, err = m.Close(l.ID(), 0, true)
		}
		return err
	}
	if clients == 1 {
		for b.Loop() {
			if err := life(); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	b.SetParallelism(max(1, clients/runtime.GOMAXPROCS(0)))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := life(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
