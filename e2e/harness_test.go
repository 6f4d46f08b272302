// Package e2e drives the real binaries: it builds the daemon and ctl,
// starts the daemon on a temporary socket, waits on its health check, and
// talks to it through ctl, real gRPC clients and real TCP connections.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/fleet/natstest"
	"github.com/listenerd/listenerd/internal/testkit"
)

// guard bounds every wait; it is a safety net, never a timing assertion.
const guard = 60 * time.Second

var daemonBin, ctlBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "listenerd-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	daemonBin, ctlBin = filepath.Join(dir, "listenerd"), filepath.Join(dir, "ctl")
	// A binary built with -race sleeps a second before it exits (the race
	// runtime's atexit_sleep_ms): over the hundreds of ctl runs and daemon
	// stops of this package, minutes. Every process started here
	// inherits the setting.
	os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	for bin, pkg := range map[string]string{daemonBin: "../daemon", ctlBin: "../ctl"} {
		cmd := exec.Command("go", "build", "-race", "-o", bin, pkg)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build", pkg, ":", err)
			os.Exit(1)
		}
	}
	code := 0
	func() {
		defer os.RemoveAll(dir)
		goleak.VerifyTestMain(exitCatcher{&code, m}, natstest.Leaks...)
	}()
	os.Exit(code)
}

// exitCatcher lets TestMain clean up after goleak's own os.Exit path.
type exitCatcher struct {
	code *int
	m    *testing.M
}

func (e exitCatcher) Run() int { *e.code = e.m.Run(); return *e.code }

// daemon is one running listenerd.
type daemon struct {
	t      *testing.T
	socket string
	cmd    *exec.Cmd
	stderr *testkit.Buffer
	client listenerdv1.ListenerServiceClient
	conn   *grpc.ClientConn
	exited chan struct{}
	err    error
}

// eventually is the kit's Eventually with this package's guard.
func eventually(t *testing.T, cond func() bool, what string) {
	t.Helper()
	testkit.EventuallyWithin(t, guard, cond, what)
}

// dial is the kit's Dial with this package's guard on reads and writes.
func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c := testkit.Dial(t, addr)
	_ = c.SetDeadline(time.Now().Add(guard))
	return c
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	t.Cleanup(cancel)
	return ctx
}

// startDaemon runs the daemon binary on a fresh socket and waits until its
// health check answers SERVING. It is stopped with SIGTERM at cleanup and
// must exit 0.
func startDaemon(t *testing.T, args ...string) *daemon {
	t.Helper()
	return startDaemonIn(t, testkit.ShortDir(t), args...)
}

// startDaemonIn starts a daemon whose socket and state live in dir, so a
// second daemon started in the same dir finds the first one's state.
func startDaemonIn(t *testing.T, dir string, args ...string) *daemon {
	t.Helper()
	return startDaemonWrapped(t, dir, nil, args...)
}

// startDaemonWrapped starts the daemon under a wrapper command (such as
// prlimit) when wrap is not empty.
func startDaemonWrapped(t *testing.T, dir string, wrap []string, args ...string) *daemon {
	t.Helper()
	return startDaemonPrepared(t, dir, wrap, nil, args...)
}

// startDaemonPrepared is startDaemonWrapped, with prepare (when not nil)
// called on the command before it starts (its environment, its extra
// files).
func startDaemonPrepared(t *testing.T, dir string, wrap []string, prepare func(*exec.Cmd), args ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, socket: filepath.Join(dir, "run", "listenerd.sock"), stderr: &testkit.Buffer{}, exited: make(chan struct{})}
	argv := append(append(append([]string{}, wrap...), daemonBin, "--socket", d.socket, "--state-dir", filepath.Join(dir, "state")), args...)
	d.cmd = exec.Command(argv[0], argv[1:]...)
	d.cmd.Stdout, d.cmd.Stderr = d.stderr, d.stderr
	if prepare != nil {
		prepare(d.cmd)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.stderr.String())
		}
	})

	d.conn = testkit.DialGRPCUnix(t, d.socket)
	health := healthpb.NewHealthClient(d.conn)
	ctx := testContext(t)
	for {
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
		select {
		case <-d.exited:
			t.Fatalf("daemon exited before serving: %v\n%s", d.err, d.stderr.String())
		case <-ctx.Done():
			t.Fatalf("daemon never became healthy: %v\n%s", err, d.stderr.String())
		case <-time.After(10 * time.Millisecond): // the socket is not there yet
		}
	}
	d.client = listenerdv1.NewListenerServiceClient(d.conn)
	return d
}

// kill ends the daemon with SIGKILL, as a crash would.
func (d *daemon) kill() {
	_ = d.cmd.Process.Kill()
	<-d.exited
	d.conn.Close()
}

// stop sends SIGTERM and expects a clean exit 0.
func (d *daemon) stop() {
	select {
	case <-d.exited:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(guard):
		_ = d.cmd.Process.Kill()
		<-d.exited
		d.t.Errorf("daemon did not exit on SIGTERM")
		return
	}
	if d.err != nil {
		d.t.Errorf("daemon exit: %v\n%s", d.err, d.stderr.String())
	}
}

// result is what one ctl run printed.
type result struct {
	stdout, stderr string
	code           int
}

// ctl runs the ctl binary against the daemon and waits for it.
func (d *daemon) ctl(args ...string) result {
	d.t.Helper()
	return d.ctlEnv(nil, args...)
}

// ctlEnv runs ctl with extra environment variables and waits for it.
func (d *daemon) ctlEnv(env []string, args ...string) result {
	d.t.Helper()
	return runBin(d.t, ctlBin, append([]string{"LISTENERD_SOCKET=" + d.socket}, env...), "", args...)
}

// runBin runs bin with args, extra environment env and stdin (none when
// empty), bounded by guard, and returns what it printed and its exit code.
func runBin(t *testing.T, bin string, env []string, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%s %v: %v", filepath.Base(bin), args, err)
	}
	return r
}

// mustCtl runs ctl and fails the test unless it exits 0.
func (d *daemon) mustCtl(args ...string) string {
	d.t.Helper()
	r := d.ctl(args...)
	if r.code != 0 {
		d.t.Fatalf("ctl %v: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// stream is a long-running ctl (watch, listen --follow) read line by line.
type stream struct {
	t     *testing.T
	cmd   *exec.Cmd
	lines chan string
	done  chan struct{}
	err   error
	errb  *testkit.Buffer
}

func (d *daemon) ctlStream(args ...string) *stream {
	d.t.Helper()
	cmd := exec.Command(ctlBin, args...)
	cmd.Env = append(os.Environ(), "LISTENERD_SOCKET="+d.socket)
	out, err := cmd.StdoutPipe()
	if err != nil {
		d.t.Fatal(err)
	}
	s := &stream{t: d.t, cmd: cmd, lines: make(chan string, 1<<16), done: make(chan struct{}), errb: &testkit.Buffer{}}
	cmd.Stderr = s.errb
	if err := cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
		s.err = cmd.Wait()
	}()
	d.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-s.done:
		case <-time.After(guard):
			_ = cmd.Process.Kill()
			<-s.done
		}
		if d.t.Failed() {
			d.t.Logf("ctl %v stderr:\n%s", args, s.errb.String())
		}
	})
	return s
}

// next returns the next line, failing the test if the stream ends first.
func (s *stream) next() string {
	s.t.Helper()
	select {
	case l, ok := <-s.lines:
		if !ok {
			<-s.done
			s.t.Fatalf("stream ended: %v\nstderr: %s", s.err, s.errb.String())
		}
		return l
	case <-time.After(guard):
		s.t.Fatalf("no line from stream\nstderr: %s", s.errb.String())
	}
	return ""
}

// interrupt sends SIGINT and returns the exit error once it has ended.
func (s *stream) interrupt() error {
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	for range s.lines {
	}
	<-s.done
	return s.err
}

func unmarshalLine(t *testing.T, line string, m proto.Message) {
	t.Helper()
	if strings.Contains(strings.TrimSpace(line), "\n") {
		t.Fatalf("not one line: %q", line)
	}
	if err := protojson.Unmarshal([]byte(line), m); err != nil {
		t.Fatalf("json %q: %v", line, err)
	}
}
