package main

import (
	"bufio"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// proc is a child process whose stdout is read line by line. Its stdin
// stays open while it runs: the bench's own children exit when it closes,
// and every child gets SIGKILL if the bench dies (Pdeathsig), so nothing
// outlives a run.
type proc struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	done  chan struct{}
	err   error
}

func startProc(name string, env []string, stderr io.Writer, path string, args ...string) (*proc, error) {
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = stderr
	cmd.SysProcAttr = childAttr()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, stdin: stdin, lines: make(chan string, 64), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default: // nobody reads that far: drop
			}
		}
		close(p.lines)
		p.err = cmd.Wait()
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// line returns the next stdout line, failing if the process ends or the
// timeout passes first.
func (p *proc) line(ctx context.Context, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case l, ok := <-p.lines:
		if !ok {
			<-p.done
			return "", fmt.Errorf("%s exited: %v", p.name, p.err)
		}
		return l, nil
	case <-t.C:
		return "", fmt.Errorf("%s: nothing printed within %v", p.name, timeout)
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// lineWith returns the first stdout line that starts with prefix.
func (p *proc) lineWith(ctx context.Context, prefix string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for i := 0; i < 100; i++ {
		l, err := p.line(ctx, time.Until(deadline))
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(l, prefix) {
			return l, nil
		}
	}
	return "", fmt.Errorf("%s: no line starting %q", p.name, prefix)
}

// stop ends the process: stdin closed and SIGTERM, then SIGKILL after
// grace.
func (p *proc) stop(grace time.Duration) error {
	_ = p.stdin.Close()
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	return p.wait(grace)
}

// closeStdin closes the process's stdin, which ends the bench's own
// children, and waits for it to exit; SIGKILL after grace.
func (p *proc) closeStdin(grace time.Duration) error {
	_ = p.stdin.Close()
	return p.wait(grace)
}

func (p *proc) wait(grace time.Duration) error {
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not exit within %v; killed", p.name, grace)
	}
}

// moduleRoot returns the directory of the module the bench runs in.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the listenerd module: run from the repository, or pass --daemon")
	}
	return filepath.Dir(mod), nil
}

// buildDaemon builds ./daemon into dir. With overlay it adds a file to the
// daemon's package for this build only (the profiling variant).
func buildDaemon(ctx context.Context, root, out string, overlay map[string]string, log io.Writer) error {
	args := []string{"build", "-o", out}
	if len(overlay) > 0 {
		o := struct{ Replace map[string]string }{overlay}
		data, _ := json.Marshal(o)
		path := out + ".overlay.json"
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return err
		}
		args = append(args, "-overlay", path)
	}
	args = append(args, "./daemon")
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build ./daemon: %w", err)
	}
	return nil
}

// daemonProc is a running listenerd with an API client.
type daemonProc struct {
	*proc
	socket string
	conn   *grpc.ClientConn
	api    listenerdv1.ListenerServiceClient
	log    *os.File
}

// startDaemon starts bin on a socket in dir and waits for its health check
// to answer SERVING. It saves its state in stateDir, as the daemon does by
// default, or with stateDir "" keeps none (--ephemeral).
func startDaemon(ctx context.Context, bin, dir, name string, env []string, stateDir string) (*daemonProc, error) {
	socket := filepath.Join(dir, name+".sock")
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	state := []string{"--ephemeral"}
	if stateDir != "" {
		state = []string{"--state-dir", stateDir}
	}
	p, err := startProc("listenerd "+name, env, logf, bin, append(state, "--socket", socket)...)
	if err != nil {
		logf.Close()
		return nil, err
	}
	d := &daemonProc{proc: p, socket: socket, log: logf}
	d.conn, err = grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		d.stop()
		return nil, err
	}
	health := healthpb.NewHealthClient(d.conn)
	deadline := time.Now().Add(time.Minute)
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := health.Check(actx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
		select {
		case <-p.done:
			d.stop()
			// The log goes with the temporary directory unless --keep:
			// say what it said.
			return nil, fmt.Errorf("daemon exited before serving: %v (log: %s, ending: %q)", p.err, logf.Name(), logTail(logf.Name(), 3))
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil || attempt > 600 {
			d.stop()
			return nil, fmt.Errorf("daemon never became healthy: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // bounded by the deadline and the attempt count
	}
	d.api = listenerdv1.NewListenerServiceClient(d.conn)
	return d, nil
}

// logTail returns the last n lines of the file at path.
func logTail(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// stop sends SIGTERM and waits for the daemon to drain and exit.
func (d *daemonProc) stop() error {
	if d.conn != nil {
		d.conn.Close()
	}
	err := d.proc.stop(30 * time.Second)
	d.log.Close()
	return err
}

// createListener creates a listener on 127.0.0.1:0 with handler h and
// returns its id and bound address.
func (d *daemonProc) createListener(ctx context.Context, h *listenerdv1.Handler) (id, addr string, err error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := d.api.CreateListener(cctx, &listenerdv1.CreateListenerRequest{
		Spec: &listenerdv1.ListenerSpec{Host: "127.0.0.1", Port: 0, Handler: h},
	})
	if err != nil {
		return "", "", fmt.Errorf("CreateListener: %w", err)
	}
	return resp.GetListener().GetId(), resp.GetListener().GetStatus().GetBoundAddress(), nil
}

func echoHandler() *listenerdv1.Handler {
	return &listenerdv1.Handler{Kind: &listenerdv1.Handler_Echo{Echo: &listenerdv1.EchoHandler{}}}
}

func forwardHandler(upstream string) *listenerdv1.Handler {
	return &listenerdv1.Handler{Kind: &listenerdv1.Handler_Forward{Forward: &listenerdv1.ForwardHandler{Upstream: upstream}}}
}

// server is a TCP server under test: its process and its address.
type server struct {
	*proc
	addr string
}

// startGoServer starts this binary's bare Go server in mode (echo, echo4k,
// forward) in its own process.
func startGoServer(ctx context.Context, self string, env []string, stderr io.Writer, mode string, extra ...string) (*server, error) {
	p, err := startProc("go "+mode, env, stderr, self, append([]string{"serve", "--mode", mode}, extra...)...)
	return serving(ctx, p, err)
}

// serving returns the server p started (err: the start's error), once it
// has printed its address as its first line.
func serving(ctx context.Context, p *proc, err error) (*server, error) {
	if err != nil {
		return nil, err
	}
	addr, err := p.line(ctx, 30*time.Second)
	if err != nil {
		p.stop(time.Second)
		return nil, err
	}
	return &server{proc: p, addr: addr}, nil
}

//go:embed node/peer.js
var nodePeer []byte

// startNode starts the Node peer with args: none for the echo server, the
// upstream for the forwarder. It goes through sh only to raise the soft
// open-file limit to the hard one first.
func startNode(ctx context.Context, node, dir string, stderr io.Writer, args ...string) (*server, error) {
	path := filepath.Join(dir, "peer.js")
	if err := os.WriteFile(path, nodePeer, 0o600); err != nil {
		return nil, err
	}
	p, err := startProc("node", nil, stderr, "/bin/sh", append([]string{"-c",
		`ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@"`, node, path}, args...)...)
	return serving(ctx, p, err)
}

// rssKiB reads VmRSS of pid from /proc.
func rssKiB(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// selfCPU is this process's user+system CPU time, without its children
// (the load generators it runs and reaps).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuTime reads the user+system CPU time of pid and of the children it
// has reaped (socat forks one per connection) from /proc (clock ticks of
// 10 ms, as on every Linux this runs on).
func cpuTime(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 15 {
		return 0
	}
	var ticks int64
	for _, i := range []int{11, 12, 13, 14} { // utime, stime, cutime, cstime
		t, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += t
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}
