// Command faults measures how closely listenerd's latency and bandwidth
// faults hold their figures: real sockets on 127.0.0.1, the listener
// engine in this process, a plain TCP client. Figures go to BENCHMARKS.md;
// no test asserts them.
//
//	go run ./internal/bench/faults                      # 1,000 round trips at 50 ms, 10 s at 1 MB/s
//	go run ./internal/bench/faults -n 200 -seconds 3    # quicker
//
// Latency: 1,000 round trips of 64 bytes through an echo listener with a
// latency fault on its out direction, and through the same listener's twin
// without it, interleaved in the same run; the added p50 and p99 are the
// differences. Bandwidth: an echo listener whose out direction is limited
// to -rate bytes a second, fed as fast as the client can; the average over
// -seconds and every 100 ms window against the rate.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"time"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
)

func main() {
	n := flag.Int("n", 1000, "round trips for the latency figure")
	latency := flag.Duration("latency", 50*time.Millisecond, "the latency fault")
	rate := flag.Int64("rate", 1_000_000, "the bandwidth fault, bytes a second")
	burst := flag.Int64("burst", 0, "the bandwidth fault's burst (0: rate/50)")
	seconds := flag.Int("seconds", 10, "how long to measure bandwidth")
	flag.Parse()
	if err := run(*n, *latency, *rate, *burst, *seconds); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		os.Exit(1)
	}
}

func run(n int, latency time.Duration, rate, burst int64, seconds int) error {
	m := listener.NewManager(events.NewBus(events.Options{}), nil, listener.Options{})
	defer m.Shutdown(0)
	echo := listener.HandlerSpec{Kind: "echo"}
	// The baseline takes the fault path too (a fault that never applies),
	// so the difference is the fault's delay alone.
	plain, err := m.Create(context.Background(), "", listener.Spec{Handler: echo,
		Faults: []listener.Fault{{Name: "never", Kind: events.FaultLatency, Latency: latency, Probability: 0}}})
	if err != nil {
		return err
	}
	slow, err := m.Create(context.Background(), "", listener.Spec{Handler: echo,
		Faults: []listener.Fault{{Name: "lat", Kind: events.FaultLatency, Latency: latency, Direction: events.FaultOut, Probability: 1}}})
	if err != nil {
		return err
	}
	base, faulted, timer, err := roundTrips(plain.Info().Bound, slow.Info().Bound, n, latency)
	if err != nil {
		return err
	}
	p := func(vs []time.Duration, q float64) time.Duration { return vs[min(len(vs)-1, int(q*float64(len(vs))))] }
	fmt.Printf("latency fault %v, %d round trips of 64 B, interleaved with the same listener without it:\n", latency, n)
	fmt.Printf("  without: p50 %v  p99 %v\n", p(base, 0.5), p(base, 0.99))
	fmt.Printf("  with:    p50 %v  p99 %v  max %v; %d of %d over 1.5x the latency\n", p(faulted, 0.5), p(faulted, 0.99),
		faulted[len(faulted)-1], over(faulted, latency*3/2), len(faulted))
	fmt.Printf("  added:   p50 %v (%+v off)  p99 %v (%+v off)\n", p(faulted, 0.5)-p(base, 0.5), p(faulted, 0.5)-p(base, 0.5)-latency,
		p(faulted, 0.99)-p(base, 0.99), p(faulted, 0.99)-p(base, 0.99)-latency)
	fmt.Printf("  control, a bare timer of %v in this process, interleaved: p50 %v  p99 %v late\n", latency, p(timer, 0.5)-latency, p(timer, 0.99)-latency)

	bw, err := m.Create(context.Background(), "", listener.Spec{Handler: echo,
		Faults: []listener.Fault{{Name: "bw", Kind: events.FaultBandwidth, Rate: rate, Burst: burst, Direction: events.FaultOut, Probability: 1}}})
	if err != nil {
		return err
	}
	windows, avg, err := bandwidth(bw.Info().Bound, time.Duration(seconds)*time.Second)
	if err != nil {
		return err
	}
	worst := 0.0
	for _, w := range windows {
		worst = max(worst, abs(w*10/float64(rate)-1))
	}
	fmt.Printf("bandwidth fault %d B/s (burst %d), %d s:\n", rate, burst, seconds)
	fmt.Printf("  average %.0f B/s (%+.2f%%); %d windows of 100 ms, worst %.1f%% off\n", avg, (avg/float64(rate)-1)*100, len(windows), worst*100)
	return nil
}

// over counts the durations (sorted) above d.
func over(ds []time.Duration, d time.Duration) int {
	i, _ := slices.BinarySearch(ds, d+1)
	return len(ds) - i
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}

// roundTrips times n round trips on each address, alternating, and as
// many bare timers of d: how late this machine wakes a sleeper.
func roundTrips(a, b string, n int, d time.Duration) (da, db, dt []time.Duration, err error) {
	ca, err := net.Dial("tcp", a)
	if err != nil {
		return nil, nil, nil, err
	}
	defer ca.Close()
	cb, err := net.Dial("tcp", b)
	if err != nil {
		return nil, nil, nil, err
	}
	defer cb.Close()
	msg, buf := make([]byte, 64), make([]byte, 64)
	one := func(c net.Conn) (time.Duration, error) {
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			return 0, err
		}
		_, err := io.ReadFull(c, buf)
		return time.Since(t0), err
	}
	for range n {
		x, err := one(ca)
		if err != nil {
			return nil, nil, nil, err
		}
		y, err := one(cb)
		if err != nil {
			return nil, nil, nil, err
		}
		t0 := time.Now()
		time.Sleep(d)
		da, db, dt = append(da, x), append(db, y), append(dt, time.Since(t0))
	}
	slices.Sort(da)
	slices.Sort(db)
	slices.Sort(dt)
	return da, db, dt, nil
}

// bandwidth feeds an echo at full speed and counts what comes back in each
// 100 ms window, after a first second that is left out (the bucket starts
// full).
func bandwidth(addr string, d time.Duration) (windows []float64, avg float64, err error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, 0, err
	}
	defer c.Close()
	go func() {
		buf := make([]byte, 32<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	warm := time.Now().Add(time.Second)
	for time.Now().Before(warm) {
		if _, err := c.Read(buf); err != nil {
			return nil, 0, err
		}
	}
	start := time.Now()
	next := start.Add(100 * time.Millisecond)
	var inWindow, total int
	for {
		_ = c.SetReadDeadline(next)
		k, err := c.Read(buf)
		inWindow += k
		total += k
		if err != nil && !os.IsTimeout(err) {
			return nil, 0, err
		}
		if now := time.Now(); !now.Before(next) {
			windows = append(windows, float64(inWindow))
			inWindow = 0
			next = next.Add(100 * time.Millisecond)
			if next.Sub(start) > d {
				return windows, float64(total-inWindow) / now.Sub(start).Seconds(), nil
			}
		}
	}
}
