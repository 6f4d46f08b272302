package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/proc"
)

// guard bounds every wait on the daemon; it is a safety net, never a
// measure.
const guard = 60 * time.Second

// probe holds what the phases share.
type probe struct {
	cfg  config
	tmp  string
	logw io.Writer
	main *daemon // phases 1, 3, 6 and 8

	baseFDs, baseGoroutines int
	baseFDSet               map[string]int // what the first daemon's descriptors are, at the start
	st                      *stormState
	persist                 *persistent // phases 2 and 4
}

func (p *probe) logf(format string, args ...any) {
	fmt.Fprintf(p.logw, time.Now().Format("15:04:05 ")+format+"\n", args...)
}

// daemon is one running daemon process.
type daemon struct {
	socket   string
	stateDir string
	cmd      *exec.Cmd
	stderr   *buffer
	metrics  string // http://ADDR/metrics, when --metrics was given
	exited   chan struct{}
	state    *os.ProcessState
	conn     *grpc.ClientConn
	c        listenerdv1.ListenerServiceClient
}

// buffer is a bytes.Buffer safe for one writer and many readers.
type buffer struct {
	mu    sync.Mutex
	b     bytes.Buffer
	wrote chan struct{} // when not nil, signalled after each write
}

func (b *buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.wrote != nil {
		select {
		case b.wrote <- struct{}{}:
		default:
		}
	}
	return b.b.Write(p)
}

func (b *buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// startErr is a daemon that exited instead of serving.
type startErr struct {
	code   int
	stderr string
}

func (e *startErr) Error() string {
	return fmt.Sprintf("daemon exited %d before serving: %s", e.code, strings.TrimSpace(e.stderr))
}

// startDaemon runs the daemon binary (under wrap, when given) on socket
// with args and waits for its "serving on unix://" line. A daemon that
// exits first is a *startErr with its exit code and stderr.
func (p *probe) startDaemon(ctx context.Context, socket string, wrap []string, args ...string) (*daemon, error) {
	d := &daemon{socket: socket, stderr: &buffer{}, exited: make(chan struct{})}
	argv := append(append(append([]string{}, wrap...), p.cfg.daemon, "--socket", socket, "--log-level", "warn"), args...)
	for i, a := range argv {
		if a == "--state-dir" && i+1 < len(argv) {
			d.stateDir = argv[i+1]
		}
	}
	d.cmd = exec.Command(argv[0], argv[1:]...)
	d.cmd.Stderr = d.stderr
	stdout := &buffer{wrote: make(chan struct{}, 1)}
	d.cmd.Stdout = stdout
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		_ = d.cmd.Wait()
		d.state = d.cmd.ProcessState
		close(d.exited)
	}()
	timer := time.NewTimer(guard)
	defer timer.Stop()
	for {
		out := stdout.String()
		if _, after, ok := strings.Cut(out, "listenerd serving metrics on "); ok {
			d.metrics, _, _ = strings.Cut(after, "\n")
		}
		if strings.Contains(out, "serving on unix://") {
			break
		}
		select {
		case <-stdout.wrote:
		case <-d.exited:
			if strings.Contains(stdout.String(), "serving on unix://") {
				continue
			}
			return nil, &startErr{code: d.state.ExitCode(), stderr: d.stderr.String()}
		case <-timer.C:
			_ = d.cmd.Process.Kill()
			<-d.exited
			return nil, fmt.Errorf("daemon did not serve within %v: %s", guard, d.stderr.String())
		case <-ctx.Done():
			_ = d.cmd.Process.Kill()
			<-d.exited
			return nil, ctx.Err()
		}
	}
	var err error
	d.conn, err = grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		d.kill()
		return nil, err
	}
	d.c = listenerdv1.NewListenerServiceClient(d.conn)
	return d, nil
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

// stop sends SIGTERM and waits (SIGKILL after the guard); it returns the
// exit code. Stopping a daemon that has exited returns its code.
func (d *daemon) stop() (int, error) {
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
	select {
	case <-d.exited:
		return d.state.ExitCode(), nil
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		return d.state.ExitCode(), nil
	case <-time.After(guard):
		_ = d.cmd.Process.Kill()
		<-d.exited
		return -1, errors.New("no exit within the guard after SIGTERM; killed")
	}
}

// kill sends SIGKILL and waits.
func (d *daemon) kill() {
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
	_ = d.cmd.Process.Kill()
	<-d.exited
}

// panics counts the lines of the daemon's stderr that tell of a panic.
func (d *daemon) panics() int {
	n := 0
	for l := range strings.SplitSeq(d.stderr.String(), "\n") {
		if strings.Contains(l, "panic") || strings.HasPrefix(l, "goroutine ") || strings.HasPrefix(l, "fatal error") {
			n++
		}
	}
	return n
}

// fds counts the daemon's open descriptors.
func (d *daemon) fds() int {
	es, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.pid()))
	if err != nil {
		return -1
	}
	return len(es)
}

// fdSet counts the daemon's descriptors by what they point at.
func (d *daemon) fdSet() map[string]int {
	dir := fmt.Sprintf("/proc/%d/fd", d.pid())
	es, _ := os.ReadDir(dir)
	out := map[string]int{}
	for _, e := range es {
		t, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		if i := strings.Index(t, ":["); i > 0 {
			t = t[:i] // socket:[123] → socket
		}
		out[t]++
	}
	return out
}

// rss is the daemon's VmRSS and VmHWM.
func (d *daemon) rss() string { return proc.Memory(d.pid()) }

// noKeepAlive scrapes without keeping a connection in the daemon between
// scrapes, so the daemon's descriptor count is not the probe's doing.
var noKeepAlive = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: guard}

// metric reads one unlabelled series from the metrics endpoint.
func (d *daemon) metric(name string) (float64, error) {
	resp, err := noKeepAlive.Get(d.metrics)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("no %s in %s", name, d.metrics)
}

// goroutines is go_goroutines from the metrics endpoint.
func (d *daemon) goroutines() int {
	v, err := d.metric("go_goroutines")
	if err != nil {
		return -1
	}
	return int(v)
}

// settle waits until the daemon's descriptors and goroutines are within
// slack of the baseline (or the guard passes) and returns what it saw last.
func (d *daemon) settle(ctx context.Context, baseFDs, baseG, fdSlack, gSlack int) (fds, g int) {
	deadline := time.Now().Add(guard)
	for {
		fds, g = d.fds(), d.goroutines()
		if (fds <= baseFDs+fdSlack && g <= baseG+gSlack) || time.Now().After(deadline) || ctx.Err() != nil {
			return fds, g
		}
		time.Sleep(100 * time.Millisecond) // polling /proc: nothing to wait on
	}
}

// ctl runs the ctl binary against d and returns its exit code and output.
func (p *probe) ctl(ctx context.Context, d *daemon, args ...string) (int, string, string) {
	ctx, cancel := context.WithTimeout(ctx, guard)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.cfg.ctl, append([]string{"--socket", d.socket}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		code = -1
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
	}
	return code, out.String(), errb.String()
}

// dir makes a fresh directory under the probe's temporary one.
func (p *probe) dir(name string) string {
	d, err := os.MkdirTemp(p.tmp, name)
	if err != nil {
		panic(err)
	}
	return d
}

// startMain starts the daemon phases 1, 3, 6 and 8 share: no state kept,
// no API rate limit, metrics on.
func (p *probe) startMain(ctx context.Context) error {
	dir := p.dir("main")
	d, err := p.startDaemon(ctx, filepath.Join(dir, "l.sock"), nil, "--ephemeral", "--api-rate", "0", "--metrics", "127.0.0.1:0")
	if err != nil {
		return err
	}
	p.main = d
	if _, err := d.c.GetDaemonStatus(ctx, &listenerdv1.GetDaemonStatusRequest{}); err != nil {
		return err
	}
	p.baseFDs, p.baseGoroutines, p.baseFDSet = d.fds(), d.goroutines(), d.fdSet()
	p.logf("first daemon pid %d: %d fds, %d goroutines, %s", d.pid(), p.baseFDs, p.baseGoroutines, d.rss())
	return nil
}

func ptr[T any](v T) *T { return &v }
