// Command rssprobe measures the daemon's memory under the event history's
// worst case: connection data recorded for a watcher that reads, while
// watchers that never read hold their streams, and echo connections
// publish events as fast as they can. It starts the daemon binary it is
// given on a temporary socket (with --ephemeral and any extra flags),
// drives it until the daemon has published -events events, and prints the
// daemon's resident memory (VmRSS, and VmHWM, its peak) as it goes and
// once the load has stopped. Linux only (/proc).
//
//	go build -o /tmp/listenerd ./daemon
//	go run ./scripts/rssprobe -daemon /tmp/listenerd -events 2000000
//	go run ./scripts/rssprobe -daemon /tmp/listenerd -events 2000000 -- --history-bytes 8388608
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/proc"
)

func main() {
	bin := flag.String("daemon", "", "the daemon binary")
	target := flag.Uint64("events", 1_000_000, "events the daemon publishes before the load stops")
	stuck := flag.Int("stuck", 4, "data watchers that never read")
	clients := flag.Int("clients", 16, "concurrent echo clients")
	payload := flag.Int("payload", 200, "bytes each connection sends and reads back")
	settle := flag.Duration("settle", 10*time.Second, "how long to wait after the load before the last reading")
	flag.Parse()
	if *bin == "" {
		fmt.Fprintln(os.Stderr, "rssprobe: -daemon is required")
		os.Exit(2)
	}
	if err := run(*bin, flag.Args(), *target, *stuck, *clients, *payload, *settle); err != nil {
		fmt.Fprintln(os.Stderr, "rssprobe:", err)
		os.Exit(1)
	}
}

func run(bin string, extra []string, target uint64, stuck, clients, payload int, settle time.Duration) error {
	dir, err := os.MkdirTemp("", "rssprobe")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	socket := filepath.Join(dir, "run", "l.sock")
	cmd := exec.Command(bin, append([]string{"--ephemeral", "--socket", socket, "--log-level", "warn"}, extra...)...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	}()
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil { // "listenerd serving on …"
		return fmt.Errorf("daemon: %w", err)
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	pid := cmd.Process.Pid

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	c := listenerdv1.NewListenerServiceClient(conn)
	resp, err := c.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{
		Backlog: ptr(uint32(4096)), Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Echo{Echo: &listenerdv1.EchoHandler{}}}}})
	if err != nil {
		return err
	}
	addr := resp.GetListener().GetStatus().GetBoundAddress()

	// Watchers that never read, each on a client connection of its own.
	for range stuck {
		sc, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer sc.Close()
		if _, err := listenerdv1.NewListenerServiceClient(sc).WatchEvents(ctx, &listenerdv1.WatchEventsRequest{IncludeData: true}); err != nil {
			return err
		}
	}
	// One that reads keeps the data recorded, and counts the head.
	var head atomic.Uint64
	w, err := c.WatchEvents(ctx, &listenerdv1.WatchEventsRequest{IncludeData: true})
	if err != nil {
		return err
	}
	go func() {
		for {
			r, err := w.Recv()
			if err != nil {
				return
			}
			if evs := r.GetEvents(); len(evs) > 0 {
				head.Store(evs[len(evs)-1].GetSequence())
			}
		}
	}()

	var wg sync.WaitGroup
	stop := make(chan struct{})
	msg := []byte(strings.Repeat("x", payload))
	for range clients {
		wg.Go(func() {
			buf := make([]byte, payload)
			for {
				select {
				case <-stop:
					return
				default:
				}
				nc, err := net.Dial("tcp", addr)
				if err != nil {
					continue
				}
				_, _ = nc.Write(msg)
				_, _ = io.ReadFull(nc, buf)
				nc.Close()
			}
		})
	}
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for head.Load() < target {
		<-tick.C
		fmt.Printf("%6.0fs events %9d  %s\n", time.Since(start).Seconds(), head.Load(), proc.Memory(pid))
	}
	close(stop)
	wg.Wait()
	fmt.Printf("load stopped after %.0fs at %d events\n", time.Since(start).Seconds(), head.Load())
	time.Sleep(settle)
	fmt.Printf("settled (%v later): %s\n", settle, proc.Memory(pid))
	return nil
}

func ptr[T any](v T) *T { return &v }
