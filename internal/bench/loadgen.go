package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// loadResult is what one loadgen run prints, as one JSON line.
type loadResult struct {
	Ops      int64   `json:"ops,omitempty"`      // measured operations that succeeded
	WarmOps  int64   `json:"warm_ops,omitempty"` // warm-up operations that succeeded
	Errors   int64   `json:"errors"`
	FirstErr string  `json:"first_error,omitempty"`
	Seconds  float64 `json:"seconds,omitempty"`
	Rate     float64 `json:"rate,omitempty"` // short: connections a second
	Bytes    int64   `json:"bytes,omitempty"`
	MiBps    float64 `json:"mibps,omitempty"` // bulk: MiB echoed a second
	P50us    float64 `json:"p50_us,omitempty"`
	P99us    float64 `json:"p99_us,omitempty"`
	APIus    float64 `json:"api_us,omitempty"` // api: median CreateListener+CloseListener
	CreateUS float64 `json:"create_us,omitempty"`
	CloseUS  float64 `json:"close_us,omitempty"`
	RPCus    float64 `json:"rpc_us,omitempty"`  // api: median health check on the daemon
	BareUS   float64 `json:"bare_us,omitempty"` // api: median health check on a bare grpc-go server
	RawUS    float64 `json:"raw_us,omitempty"`  // api: median net.Listen+Close
	Ready    int     `json:"ready,omitempty"`   // hold: connections held
}

// loadgenMain is the load generator, run by the bench in a process of its
// own so that the load does not share a runtime with the servers or the
// bench:
//
//	short ADDR   connect, echo --size bytes, close; --conns of them, --concurrency at a time
//	bulk  ADDR   --conns connections each echoing --bytes
//	rtt   ADDR   --n round trips of --size bytes on one connection
//	hold  ADDR   open --conns connections, echo once on each, print ready, hold until stdin closes
//	api   SOCKET --n CreateListener+CloseListener pairs against --n net.Listen+Close pairs
func loadgenMain(args []string) int {
	if len(args) < 1 {
		fmt.Fprintln(os.Stderr, "loadgen: mode required (short, bulk, rtt, hold, api)")
		return 2
	}
	mode := args[0]
	fs := flag.NewFlagSet("loadgen "+mode, flag.ContinueOnError)
	addr := fs.String("addr", "", "server host:port (short, bulk, rtt, hold)")
	socket := fs.String("socket", "", "daemon API socket (api)")
	bare := fs.String("bare", "", "api: socket of a bare grpc-go health server, timed too")
	conns := fs.Int("conns", 1, "connections")
	conc := fs.Int("concurrency", 1, "connections at a time")
	size := fs.Int("size", 16, "message size in bytes")
	total := fs.Int64("bytes", 1<<20, "bulk: bytes echoed per connection")
	n := fs.Int("n", 1000, "rtt, api: measured operations")
	warm := fs.Int("warmup", 0, "operations before measuring")
	deadline := fs.Duration("deadline", 2*time.Minute, "bound on the whole run")
	halfClose := fs.Bool("half-close", true, "bulk: half-close each connection once all is written")
	burst := fs.Int("burst", 0, "api: pairs back to back before a pause (0: no pauses)")
	pause := fs.Duration("pause", time.Second, "api: the pause after each burst")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *deadline)
	defer cancel()

	var res loadResult
	switch mode {
	case "short":
		res = runShort(ctx, *addr, *conns, *conc, *size, *warm)
	case "bulk":
		res = runBulk(ctx, *addr, *conns, *total, *halfClose)
	case "rtt":
		res = runRTT(ctx, *addr, *n, *warm, *size)
	case "hold":
		return runHold(ctx, *addr, *conns, *conc, *size)
	case "api":
		res = runAPI(ctx, *socket, *bare, *n, *warm, *burst, *pause)
	default:
		fmt.Fprintf(os.Stderr, "loadgen: unknown mode %q\n", mode)
		return 2
	}
	_ = json.NewEncoder(os.Stdout).Encode(res)
	if res.Errors > 0 {
		fmt.Fprintf(os.Stderr, "loadgen %s: %d errors, first: %s\n", mode, res.Errors, res.FirstErr)
	}
	return 0
}

// errCount counts errors and keeps the first.
type errCount struct {
	n     atomic.Int64
	mu    sync.Mutex
	first error
}

func (e *errCount) add(err error) {
	if e.n.Add(1) == 1 {
		e.mu.Lock()
		e.first = err
		e.mu.Unlock()
	}
}

func (e *errCount) fill(r *loadResult) {
	r.Errors = e.n.Load()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.first != nil {
		r.FirstErr = e.first.Error()
	}
}

const ioTimeout = 30 * time.Second

// echoOnce writes msg and reads as many bytes back into buf.
func echoOnce(c net.Conn, msg, buf []byte) error {
	if _, err := c.Write(msg); err != nil {
		return err
	}
	_, err := io.ReadFull(c, buf[:len(msg)])
	return err
}

func runShort(ctx context.Context, addr string, conns, conc, size, warm int) loadResult {
	msg := bytes.Repeat([]byte{'x'}, size)
	var errs errCount
	batch := func(count int) int64 {
		var next, ok atomic.Int64
		var wg sync.WaitGroup
		for range min(conc, count) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, size)
				d := net.Dialer{Timeout: ioTimeout}
				for next.Add(1) <= int64(count) && ctx.Err() == nil {
					c, err := d.DialContext(ctx, "tcp", addr)
					if err != nil {
						errs.add(err)
						continue
					}
					_ = c.SetDeadline(time.Now().Add(ioTimeout))
					err = echoOnce(c, msg, buf)
					c.Close()
					if err != nil {
						errs.add(err)
						continue
					}
					ok.Add(1)
				}
			}()
		}
		wg.Wait()
		return ok.Load()
	}
	var r loadResult
	r.WarmOps = batch(warm)
	start := time.Now()
	r.Ops = batch(conns)
	el := time.Since(start)
	r.Seconds = el.Seconds()
	r.Rate = float64(r.Ops) / el.Seconds()
	errs.fill(&r)
	return r
}

// runBulk echoes total bytes on each of conns connections, writing and
// reading at once. The writer half-closes when done unless halfClose is
// false (for servers that end both directions on a half-close).
func runBulk(ctx context.Context, addr string, conns int, total int64, halfClose bool) loadResult {
	var errs errCount
	var got atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var d net.Dialer
			nc, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				errs.add(err)
				return
			}
			c := nc.(*net.TCPConn)
			defer c.Close()
			if dl, ok := ctx.Deadline(); ok {
				_ = c.SetDeadline(dl)
			}
			werr := make(chan error, 1)
			go func() {
				buf := bytes.Repeat([]byte("listenerd bench "), 4096) // 64 KiB
				var sent int64
				for sent < total {
					w, err := c.Write(buf[:min(int64(len(buf)), total-sent)])
					sent += int64(w)
					if err != nil {
						werr <- err
						return
					}
				}
				if !halfClose {
					werr <- nil
					return
				}
				werr <- c.CloseWrite()
			}()
			buf := make([]byte, 64<<10)
			var read int64
			for read < total {
				n, err := c.Read(buf)
				read += int64(n)
				if err != nil {
					if !errors.Is(err, io.EOF) || read < total {
						errs.add(fmt.Errorf("read %d of %d bytes: %w", read, total, err))
					}
					break
				}
			}
			got.Add(read)
			if read < total {
				c.Close() // unblock the writer
			}
			if err := <-werr; err != nil && read == total {
				errs.add(err)
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	r := loadResult{Ops: int64(conns), Bytes: got.Load(), Seconds: el.Seconds()}
	r.MiBps = float64(r.Bytes) / (1 << 20) / el.Seconds()
	errs.fill(&r)
	return r
}

func runRTT(ctx context.Context, addr string, n, warm, size int) loadResult {
	var r loadResult
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return loadResult{Errors: 1, FirstErr: err.Error()}
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	msg := bytes.Repeat([]byte{'x'}, size)
	buf := make([]byte, size)
	lat := make([]time.Duration, 0, n)
	start := time.Now()
	for i := range warm + n {
		t0 := time.Now()
		if err := echoOnce(c, msg, buf); err != nil {
			return loadResult{Errors: 1, FirstErr: err.Error(), Ops: int64(len(lat))}
		}
		if i >= warm {
			lat = append(lat, time.Since(t0))
		}
	}
	r.Seconds = time.Since(start).Seconds()
	r.Ops = int64(len(lat))
	slices.Sort(lat)
	r.P50us = us(quantile(lat, 0.50))
	r.P99us = us(quantile(lat, 0.99))
	return r
}

// runHold opens conns connections, echoes once on each, prints a ready line
// and holds them until stdin closes (or the deadline passes).
func runHold(ctx context.Context, addr string, conns, conc, size int) int {
	msg := bytes.Repeat([]byte{'x'}, size)
	held := make([]net.Conn, conns)
	var errs errCount
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(conc, conns) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, size)
			d := net.Dialer{Timeout: ioTimeout}
			for i := next.Add(1) - 1; i < int64(conns) && ctx.Err() == nil; i = next.Add(1) - 1 {
				c, err := d.DialContext(ctx, "tcp", addr)
				if err != nil {
					errs.add(err)
					continue
				}
				_ = c.SetDeadline(time.Now().Add(ioTimeout))
				if err := echoOnce(c, msg, buf); err != nil {
					errs.add(err)
					c.Close()
					continue
				}
				_ = c.SetDeadline(time.Time{})
				held[i] = c
			}
		}()
	}
	wg.Wait()
	r := loadResult{}
	for _, c := range held {
		if c != nil {
			r.Ready++
		}
	}
	errs.fill(&r)
	out := bufio.NewWriter(os.Stdout)
	_ = json.NewEncoder(out).Encode(r)
	_ = out.Flush()

	stdinDone := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stdinDone)
	}()
	select {
	case <-stdinDone:
	case <-ctx.Done():
	}
	for _, c := range held {
		if c != nil {
			c.Close()
		}
	}
	return 0
}

// runAPI times CreateListener+CloseListener through the daemon's API
// against net.Listen+Close in this process, alternating the two so that
// both see the same machine, and times a no-op RPC (grpc.health.v1 Check)
// on the daemon and on a bare grpc-go server (bare, when set) as the floor
// of any call. Pairs run in bursts with a pause after each,
// which keeps them under the daemon's mutation rate limit (--api-rate):
// what is timed is the latency of each call, not how many the limit lets
// through.
func runAPI(ctx context.Context, socket, bare string, n, warm, burst int, pause time.Duration) loadResult {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return loadResult{Errors: 1, FirstErr: err.Error()}
	}
	defer conn.Close()
	api := listenerdv1.NewListenerServiceClient(conn)
	spec := &listenerdv1.ListenerSpec{Host: "127.0.0.1", Handler: echoHandler()}
	var createLat, closeLat []time.Duration
	apiOnce := func(record bool) error {
		t0 := time.Now()
		resp, err := api.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Spec: spec})
		if err != nil {
			return err
		}
		t1 := time.Now()
		_, err = api.CloseListener(ctx, &listenerdv1.CloseListenerRequest{Id: resp.GetListener().GetId(), Force: true})
		if err == nil && record {
			createLat = append(createLat, t1.Sub(t0))
			closeLat = append(closeLat, time.Since(t1))
		}
		return err
	}
	rawOnce := func() error {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		return ln.Close()
	}
	var errs errCount
	apiLat := make([]time.Duration, 0, n)
	rawLat := make([]time.Duration, 0, n)
	health := healthpb.NewHealthClient(conn)
	var rpcLat, bareLat []time.Duration
	var bareHealth healthpb.HealthClient
	if bare != "" {
		bconn, err := grpc.NewClient("unix://"+bare, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return loadResult{Errors: 1, FirstErr: err.Error()}
		}
		defer bconn.Close()
		bareHealth = healthpb.NewHealthClient(bconn)
	}
	for i := range warm + n {
		if burst > 0 && i > 0 && i%burst == 0 {
			select {
			case <-time.After(pause):
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			errs.add(ctx.Err())
			break
		}
		t0 := time.Now()
		err := apiOnce(i >= warm)
		t1 := time.Now()
		if err != nil {
			errs.add(err)
		} else if i >= warm {
			apiLat = append(apiLat, t1.Sub(t0))
		}
		t0 = time.Now()
		err = rawOnce()
		t1 = time.Now()
		if err != nil {
			errs.add(err)
		} else if i >= warm {
			rawLat = append(rawLat, t1.Sub(t0))
		}
		t0 = time.Now()
		_, err = health.Check(ctx, &healthpb.HealthCheckRequest{})
		t1 = time.Now()
		if err != nil {
			errs.add(err)
		} else if i >= warm {
			rpcLat = append(rpcLat, t1.Sub(t0))
		}
		if bareHealth == nil {
			continue
		}
		t0 = time.Now()
		_, err = bareHealth.Check(ctx, &healthpb.HealthCheckRequest{})
		t1 = time.Now()
		if err != nil {
			errs.add(err)
		} else if i >= warm {
			bareLat = append(bareLat, t1.Sub(t0))
		}
	}
	for _, l := range [][]time.Duration{apiLat, rawLat, createLat, closeLat, rpcLat, bareLat} {
		slices.Sort(l)
	}
	r := loadResult{Ops: int64(len(apiLat)), APIus: us(quantile(apiLat, 0.5)), RawUS: us(quantile(rawLat, 0.5)),
		CreateUS: us(quantile(createLat, 0.5)), CloseUS: us(quantile(closeLat, 0.5)), RPCus: us(quantile(rpcLat, 0.5)),
		BareUS: us(quantile(bareLat, 0.5))}
	errs.fill(&r)
	return r
}

// quantile returns the q-quantile of sorted (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted)) + 0.5)
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
