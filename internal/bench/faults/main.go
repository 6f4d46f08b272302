// Command faults measures how closely listenerd's latency and bandwidth
// faults hold their figures: real sockets on 127.0.0.1, the listener
// engine in this process, a plain TCP client. Figures go to BENCHMARKS.md;
// no test asserts them.
//
//	go run ./internal/bench/faults                      # 1,000 round trips at 50 ms, 10 s at 1 MB/s
//	go run ./internal/bench/faults -n 200 -seconds 3    # quicker
//	go run ./internal/bench/faults -reps 3 -toxiproxy "$(go env GOPATH)/bin/server"   # and toxiproxy's toxics, same load
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
	"strings"
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
	reps := flag.Int("reps", 1, "repetitions of the whole measurement")
	toxi := flag.String("toxiproxy", "", "path of toxiproxy's server binary: measure it too, on the same load, in the same run")
	flag.Parse()
	cfg := config{n: *n, latency: *latency, rate: *rate, burst: *burst, seconds: *seconds, reps: *reps, toxiproxy: *toxi}
	if err := cfg.check(); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		os.Exit(2)
	}
	if err := run(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		os.Exit(1)
	}
}

type config struct {
	n             int
	latency       time.Duration
	rate, burst   int64
	seconds, reps int
	toxiproxy     string
}

func (c config) check() error {
	switch {
	case c.n < 1:
		return fmt.Errorf("-n: %d, want at least 1", c.n)
	case c.latency <= 0:
		return fmt.Errorf("-latency: %v, want more than 0", c.latency)
	case c.rate < 1:
		return fmt.Errorf("-rate: %d, want at least 1", c.rate)
	case c.toxiproxy != "" && c.rate%1000 != 0:
		return fmt.Errorf("-rate: %d, toxiproxy's rate is in KB/s: want a multiple of 1000", c.rate)
	case c.toxiproxy != "" && c.latency%time.Millisecond != 0:
		return fmt.Errorf("-latency: %v, toxiproxy's latency is in ms: want whole milliseconds", c.latency)
	case c.burst < 0:
		return fmt.Errorf("-burst: %d, want 0 or more", c.burst)
	case c.seconds < 1:
		return fmt.Errorf("-seconds: %d, want at least 1", c.seconds)
	case c.reps < 1:
		return fmt.Errorf("-reps: %d, want at least 1", c.reps)
	}
	return nil
}

// result is one tool's figures in one repetition.
type result struct {
	addedP50, addedP99 time.Duration
	avg, worst         float64 // average rate's error and worst window's, as fractions
}

func run(cfg config) error {
	m := listener.NewManager(events.NewBus(events.Options{}), nil, listener.Options{})
	defer m.Shutdown(0)
	echo := listener.HandlerSpec{Kind: "echo"}
	// The baseline takes the fault path too (a fault that never applies),
	// so the difference is the fault's delay alone.
	plain, err := m.Create(context.Background(), "", listener.Spec{Handler: echo,
		Faults: []listener.Fault{{Name: "never", Kind: events.FaultLatency, Latency: cfg.latency, Probability: 0}}})
	if err != nil {
		return err
	}
	slow, err := m.Create(context.Background(), "", listener.Spec{Handler: echo,
		Faults: []listener.Fault{{Name: "lat", Kind: events.FaultLatency, Latency: cfg.latency, Direction: events.FaultOut, Probability: 1}}})
	if err != nil {
		return err
	}
	bw, err := m.Create(context.Background(), "", listener.Spec{Handler: echo,
		Faults: []listener.Fault{{Name: "bw", Kind: events.FaultBandwidth, Rate: cfg.rate, Burst: cfg.burst, Direction: events.FaultOut, Probability: 1}}})
	if err != nil {
		return err
	}
	// The same load for both: round trips interleaved, listenerd's pair
	// then toxiproxy's pair, each tool against its own no-fault twin; the
	// bandwidths one after the other.
	addrs := []string{plain.Info().Bound, slow.Info().Bound}
	bwAddrs := []string{bw.Info().Bound}
	names := []string{"listenerd"}
	if cfg.toxiproxy != "" {
		tp, err := startToxiproxy(cfg.toxiproxy)
		if err != nil {
			return err
		}
		defer tp.stop()
		up := plain.Info().Bound // the same upstream: the echo without a fault
		tPlain, err := tp.proxy("plain", up)
		if err != nil {
			return err
		}
		tLat, err := tp.proxy("lat", up)
		if err != nil {
			return err
		}
		if err := tp.toxic("lat", "latency", map[string]int64{"latency": cfg.latency.Milliseconds(), "jitter": 0}); err != nil {
			return err
		}
		tBw, err := tp.proxy("bw", up)
		if err != nil {
			return err
		}
		if err := tp.toxic("bw", "bandwidth", map[string]int64{"rate": cfg.rate / 1000}); err != nil {
			return err
		}
		addrs = append(addrs, tPlain, tLat)
		bwAddrs = append(bwAddrs, tBw)
		fmt.Printf("toxiproxy %s (its /version; a go install build says \"git\"), API %s\n", tp.version, tp.api)
		names = append(names, "toxiproxy")
	}
	p := func(vs []time.Duration, q float64) time.Duration { return vs[min(len(vs)-1, int(q*float64(len(vs))))] }
	all := make([][]result, len(names))
	for rep := range cfg.reps {
		fmt.Printf("repetition %d of %d, load average %s\n", rep+1, cfg.reps, loadavg())
		rts, timer, err := roundTrips(addrs, cfg.n, cfg.latency)
		if err != nil {
			return err
		}
		fmt.Printf("  latency %v, %d round trips of 64 B each, interleaved; bare timer of %v late: p50 %v  p99 %v\n",
			cfg.latency, cfg.n, cfg.latency, p(timer, 0.5)-cfg.latency, p(timer, 0.99)-cfg.latency)
		for i, name := range names {
			base, faulted := rts[2*i], rts[2*i+1]
			r := result{addedP50: p(faulted, 0.5) - p(base, 0.5), addedP99: p(faulted, 0.99) - p(base, 0.99)}
			fmt.Printf("  %-18s without: p50 %v p99 %v; with: p50 %v p99 %v max %v, %d over 1.5x; added p50 %v (%+v) p99 %v (%+v)\n",
				name, p(base, 0.5), p(base, 0.99), p(faulted, 0.5), p(faulted, 0.99), faulted[len(faulted)-1],
				over(faulted, cfg.latency*3/2), r.addedP50, r.addedP50-cfg.latency, r.addedP99, r.addedP99-cfg.latency)
			all[i] = append(all[i], r)
		}
		for i, name := range names {
			windows, avg, err := bandwidth(bwAddrs[i], time.Duration(cfg.seconds)*time.Second)
			if err != nil {
				return fmt.Errorf("%s bandwidth: %w", name, err)
			}
			worst := 0.0
			for _, w := range windows {
				worst = max(worst, abs(w*10/float64(cfg.rate)-1))
			}
			all[i][rep].avg, all[i][rep].worst = avg/float64(cfg.rate)-1, worst
			fmt.Printf("  %-18s bandwidth %d B/s, %d s: average %.0f B/s (%+.2f%%); %d windows of 100 ms, worst %.1f%% off\n",
				name, cfg.rate, cfg.seconds, avg, (avg/float64(cfg.rate)-1)*100, len(windows), worst*100)
		}
	}
	fmt.Printf("load average at the end %s\n\n", loadavg())
	fmt.Printf("| tool | rep | added p50 | added p99 | %d s average | worst 100 ms window |\n", cfg.seconds)
	fmt.Println("| --- | --- | --- | --- | --- | --- |")
	ms := func(d time.Duration) string {
		return fmt.Sprintf("%.2f ms (%+.2f)", float64(d)/1e6, float64(d-cfg.latency)/1e6)
	}
	for i, name := range names {
		for rep, r := range all[i] {
			fmt.Printf("| %s | %d | %s | %s | %+.2f %% | %.1f %% |\n", name, rep+1, ms(r.addedP50), ms(r.addedP99), r.avg*100, r.worst*100)
		}
	}
	return nil
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
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

// roundTrips times n round trips on each address, in turn, and as many
// bare timers of d: how late this machine wakes a sleeper.
func roundTrips(addrs []string, n int, d time.Duration) (ds [][]time.Duration, dt []time.Duration, err error) {
	conns := make([]net.Conn, len(addrs))
	for i, a := range addrs {
		c, err := net.Dial("tcp", a)
		if err != nil {
			return nil, nil, err
		}
		defer c.Close()
		conns[i] = c
	}
	msg, buf := make([]byte, 64), make([]byte, 64)
	one := func(c net.Conn) (time.Duration, error) {
		t0 := time.Now()
		if _, err := c.Write(msg); err != nil {
			return 0, err
		}
		_, err := io.ReadFull(c, buf)
		return time.Since(t0), err
	}
	ds = make([][]time.Duration, len(conns))
	for range n {
		for i, c := range conns {
			x, err := one(c)
			if err != nil {
				return nil, nil, fmt.Errorf("round trip to %s: %w", addrs[i], err)
			}
			ds[i] = append(ds[i], x)
		}
		t0 := time.Now()
		time.Sleep(d)
		dt = append(dt, time.Since(t0))
	}
	for _, x := range ds {
		slices.Sort(x)
	}
	slices.Sort(dt)
	return ds, dt, nil
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
