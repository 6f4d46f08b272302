// Command declared times declared listeners from outside, with the real
// binaries: a daemon started with --listeners FILE of -n entries, its state
// saved (not --ephemeral), until the API lists all of them LISTENING; and
// ctl apply -f of the same file against a running daemon (its state saved
// too, --api-rate 0), until ctl exits and the API lists them all. Each is
// measured -reps times, each time with a fresh state directory; the
// median is printed. Figures go to BENCHMARKS.md; no test asserts them.
//
//	go run ./internal/bench/declared                 # 2,000 listeners, 3 repetitions
//	go run ./internal/bench/declared -n 200 -reps 1  # quicker
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

func main() {
	n := flag.Int("n", 2000, "listeners in the file")
	reps := flag.Int("reps", 3, "repetitions (the median is printed)")
	timeout := flag.Duration("timeout", 5*time.Minute, "bound on the whole run")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, *n, *reps); err != nil {
		fmt.Fprintln(os.Stderr, "declared:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, n, reps int) error {
	dir, err := os.MkdirTemp("", "declared-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "bin")
	for _, b := range []string{"daemon", "ctl"} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(bin, b), "./"+b)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("building %s: %w", b, err)
		}
	}
	file := filepath.Join(dir, "listeners.yaml")
	var b strings.Builder
	b.WriteString("listeners:\n")
	for i := range n {
		fmt.Fprintf(&b, "  l%d: {spec: {port: 0, handler: {echo: {}}, limits: {maxConnections: 100}}}\n", i)
	}
	if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
		return err
	}
	var start, apply []time.Duration
	for r := range reps {
		d, err := timeStart(ctx, dir, bin, file, n, r)
		if err != nil {
			return err
		}
		start = append(start, d)
		fmt.Fprintf(os.Stderr, "rep %d: daemon start with %d declared: %v\n", r+1, n, d.Round(time.Millisecond))
		d, err = timeApply(ctx, dir, bin, file, n, r)
		if err != nil {
			return err
		}
		apply = append(apply, d)
		fmt.Fprintf(os.Stderr, "rep %d: ctl apply of %d: %v\n", r+1, n, d.Round(time.Millisecond))
	}
	fmt.Printf("%d declared listeners, state saved, median of %d:\n", n, reps)
	fmt.Printf("  daemon start --listeners until all LISTENING: %v\n", median(start).Round(time.Millisecond))
	fmt.Printf("  ctl apply -f until it exits, all LISTENING:   %v\n", median(apply).Round(time.Millisecond))
	return nil
}

// daemon is one daemon process of the bench.
type daemon struct {
	cmd    *exec.Cmd
	client listenerdv1.ListenerServiceClient
	conn   *grpc.ClientConn
}

func startDaemon(ctx context.Context, dir, bin, name string, args ...string) (*daemon, error) {
	run := filepath.Join(dir, name)
	sock := filepath.Join(run, "s.sock")
	args = append([]string{"--socket", sock, "--state-dir", filepath.Join(run, "state"), "--log-level", "warn"}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "daemon"), args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, err
	}
	return &daemon{cmd: cmd, conn: conn, client: listenerdv1.NewListenerServiceClient(conn)}, nil
}

func (d *daemon) stop() error {
	d.conn.Close()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	return d.cmd.Wait()
}

// listening counts the listeners LISTENING, waiting for the daemon to
// answer.
func (d *daemon) listening(ctx context.Context) (int, error) {
	resp, err := d.client.ListListeners(ctx, &listenerdv1.ListListenersRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return 0, err
	}
	up := 0
	for _, l := range resp.GetListeners() {
		if l.GetStatus().GetState() == listenerdv1.State_STATE_LISTENING {
			up++
		}
	}
	return up, nil
}

// waitAll polls the API (every 5 ms) until n listeners are LISTENING.
func (d *daemon) waitAll(ctx context.Context, n int) error {
	for {
		up, err := d.listening(ctx)
		if err != nil {
			return err
		}
		if up >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d listening: %w", up, n, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// timeStart starts a daemon with --listeners and times it until all n
// are LISTENING, from the moment it is started.
func timeStart(ctx context.Context, dir, bin, file string, n, rep int) (time.Duration, error) {
	t0 := time.Now()
	d, err := startDaemon(ctx, dir, bin, fmt.Sprintf("start%d", rep), "--listeners", file, "--listeners-resync", "0")
	if err != nil {
		return 0, err
	}
	err = d.waitAll(ctx, n)
	took := time.Since(t0)
	return took, errors.Join(err, d.stop())
}

// timeApply starts a daemon with nothing, waits until it answers, and
// times ctl apply -f of the file until ctl exits with all n LISTENING.
func timeApply(ctx context.Context, dir, bin, file string, n, rep int) (time.Duration, error) {
	d, err := startDaemon(ctx, dir, bin, fmt.Sprintf("apply%d", rep), "--api-rate", "0")
	if err != nil {
		return 0, err
	}
	defer d.stop()
	if _, err := d.listening(ctx); err != nil {
		return 0, err
	}
	sock := filepath.Join(dir, fmt.Sprintf("apply%d", rep), "s.sock")
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, filepath.Join(bin, "ctl"), "--socket", sock, "apply", "-f", file, "-o", "json").CombinedOutput()
	took := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("ctl apply: %w: %.400s", err, out)
	}
	if up, err := d.listening(ctx); err != nil || up != n {
		return 0, fmt.Errorf("after ctl apply: %d of %d listening (%v)", up, n, err)
	}
	return took, nil
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
