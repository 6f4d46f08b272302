package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// The Node module listenerd-net (examples/node/listenerd-net.js): Node's
// net.createServer served by the daemon's stream handler. Its fixtures are
// in examples/node/test/: the seed's server and client, and scenario.js, a
// server driven line by line on stdin that prints what it sees.

const nodeNetTest = "../examples/node/test"

// requireNodeEnv, set to 1, makes the Node tests fail where they would
// be skipped: node or npm missing, or npm unable to install the packages
// (no network). CI sets it, so that they run there.
const requireNodeEnv = "LISTENERD_REQUIRE_NODE"

// needNode returns node's path once examples/node's packages are
// installed (npm ci, the versions pinned in package-lock.json). Without
// node or npm, or when npm cannot install (no network, no registry), it
// skips the test (what, for the message), unless $LISTENERD_REQUIRE_NODE
// is 1: then it fails.
func needNode(t *testing.T, what string) string {
	t.Helper()
	skip := func(msg, detail string) {
		t.Helper()
		if os.Getenv(requireNodeEnv) == "1" {
			t.Fatalf("%s (%s=1: the Node tests must run)\n%s", msg, requireNodeEnv, detail)
		}
		t.Skipf("%s: skipping %s (set %s=1 to make this a failure)\n%s", msg, what, requireNodeEnv, detail)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		skip("node is not on PATH", "")
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		skip("npm is not on PATH", "")
	}
	npmInstall.Do(func() {
		if _, err := os.Stat(filepath.Join(nodeExample, "node_modules", "@grpc", "grpc-js")); !errors.Is(err, os.ErrNotExist) {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*guard)
		defer cancel()
		cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--prefix", nodeExample)
		if out, err := cmd.CombinedOutput(); err != nil {
			npmFailed = fmt.Sprintf("npm ci --prefix %s: %v\n%s", nodeExample, err, lastLines(string(out), 5))
		}
	})
	if npmFailed != "" {
		skip("npm could not install examples/node's packages (no network, or the registry unreachable?)", npmFailed)
	}
	return node
}

// npmInstall runs npm ci once for every Node test; npmFailed is its
// failure, the same for all (npm takes a minute to give up without a
// network).
var (
	npmInstall sync.Once
	npmFailed  string
)

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// nodeProc is a node program whose stdout is read line by line.
type nodeProc struct {
	t       *testing.T
	name    string
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	lines   chan string
	done    chan struct{}
	err     error
	seen    []string // every line read so far
	pending []string // lines read and not returned by await
	errb    *testkit.Buffer
}

// startNode runs node with args and extra environment env. It is killed
// (by its pid) at cleanup if it is still running.
func startNode(t *testing.T, node string, env []string, args ...string) *nodeProc {
	t.Helper()
	p := &nodeProc{t: t, name: filepath.Base(args[0]), lines: make(chan string, 1<<12), done: make(chan struct{}), errb: &testkit.Buffer{}}
	p.cmd = exec.Command(node, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = p.errb
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.err = p.cmd.Wait()
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s printed:\n%s\nstderr:\n%s", p.name, strings.Join(p.seen, "\n"), p.errb.String())
		}
	})
	return p
}

// kill ends the program with SIGKILL, as a crash would, and waits for it.
func (p *nodeProc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	for range p.lines {
	}
	<-p.done
}

// await returns the fields of the first line starting with prefix that
// no await has returned yet, in the order printed, whether it came before
// lines awaited earlier or not (what happens on two streams of the
// daemon comes in either order); it fails the test if the program ends
// first.
func (p *nodeProc) await(prefix string) []string {
	p.t.Helper()
	for i, l := range p.pending {
		if strings.HasPrefix(l, prefix) {
			p.pending = append(p.pending[:i:i], p.pending[i+1:]...)
			return strings.Fields(l)
		}
	}
	timeout := time.After(guard)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				<-p.done
				p.t.Fatalf("%s ended (%v) before a line %q", p.name, p.err, prefix)
			}
			p.seen = append(p.seen, l)
			if strings.HasPrefix(l, prefix) {
				return strings.Fields(l)
			}
			p.pending = append(p.pending, l)
		case <-timeout:
			p.t.Fatalf("%s printed no line %q", p.name, prefix)
		}
	}
}

// printed is the index of the first line printed so far that starts with
// prefix, or -1.
func (p *nodeProc) printed(prefix string) int {
	for i, l := range p.seen {
		if strings.HasPrefix(l, prefix) {
			return i
		}
	}
	return -1
}

// send writes a command line to the program's stdin.
func (p *nodeProc) send(cmd string) {
	p.t.Helper()
	if _, err := io.WriteString(p.stdin, cmd+"\n"); err != nil {
		p.t.Fatalf("%s: %v", p.name, err)
	}
}

// scenario runs examples/node/test/scenario.js against d and returns it
// with the address it listens on.
func scenario(t *testing.T, node string, d *daemon, args ...string) (*nodeProc, string) {
	t.Helper()
	p := startNode(t, node, []string{"LISTENERD_SOCKET=" + d.socket}, append([]string{filepath.Join(nodeNetTest, "scenario.js")}, args...)...)
	f := p.await("listening ")
	if len(f) != 4 || field(f, 1) != "127.0.0.1" || field(f, 3) != "IPv4" {
		t.Fatalf("listening line %q", f)
	}
	return p, net.JoinHostPort(field(f, 1), field(f, 2))
}

// listenerAt returns the daemon's listener bound to addr.
func listenerAt(t *testing.T, d *daemon, addr string) *listenerdv1.Listener {
	t.Helper()
	list, err := d.client.ListListeners(testContext(t), &listenerdv1.ListListenersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range list.GetListeners() {
		if l.GetStatus().GetBoundAddress() == addr && l.GetStatus().GetState() == listenerdv1.State_STATE_LISTENING {
			return l
		}
	}
	t.Fatalf("no listener listening on %s: %v", addr, list.GetListeners())
	return nil
}

// eventLog is a listener's events, from the daemon's first one on.
type eventLog struct {
	t    *testing.T
	ch   chan *listenerdv1.Event
	seen []*listenerdv1.Event
}

// watchFromStart watches the listener's events from the daemon's first
// one on.
func watchFromStart(t *testing.T, d *daemon, id string) *eventLog {
	t.Helper()
	ctx, cancel := context.WithCancel(testContext(t))
	w, err := d.client.WatchEvents(ctx, &listenerdv1.WatchEventsRequest{ListenerIds: []string{id}, AfterSequence: proto.Uint64(0)})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	e := &eventLog{t: t, ch: make(chan *listenerdv1.Event, 1<<10)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(e.ch)
		for {
			resp, err := w.Recv()
			if err != nil {
				return
			}
			for _, ev := range resp.GetEvents() {
				e.ch <- ev
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return e
}

// await returns the first event, in the order they came, that matches.
func (e *eventLog) await(what string, match func(*listenerdv1.Event) bool) *listenerdv1.Event {
	e.t.Helper()
	for _, ev := range e.seen {
		if match(ev) {
			return ev
		}
	}
	timeout := time.After(guard)
	for {
		select {
		case ev, ok := <-e.ch:
			if !ok {
				e.t.Fatalf("the watch ended before %s; events: %v", what, e.seen)
			}
			e.seen = append(e.seen, ev)
			if match(ev) {
				return ev
			}
		case <-timeout:
			e.t.Fatalf("no event %s; events: %v", what, e.seen)
		}
	}
}

// field is f[i], or "" past its end.
func field(f []string, i int) string {
	if i < len(f) {
		return f[i]
	}
	return ""
}

func localPort(c net.Conn) string {
	return strconv.Itoa(c.LocalAddr().(*net.TCPAddr).Port)
}

// The seed's server code, with only require('net') replaced by
// listenerd-net (and its address log in 'listening'), runs against the
// real daemon, and the seed's own client, plain Node net, talks to it: the
// client connects, the server sees it with the client's five-tuple, and
// the client's 18 bytes reach the server's socket through the daemon.
// The same two programs with Node's own net print the same lines.
func TestNodeNetSeed(t *testing.T) {
	node := needNode(t, "the listenerd-net module (examples/node)")
	seedServer := filepath.Join(nodeNetTest, "seed-server.js")
	seedClient := filepath.Join(nodeNetTest, "seed-client.js")

	// exchange runs the seed's server and client and returns the server's
	// port and the client's (the server's CONNECTED line).
	exchange := func(t *testing.T, server string, env []string) (*nodeProc, *nodeProc, string, string) {
		srv := startNode(t, node, append(env, "PORT=0"), server)
		f := srv.await("Server listening on ")
		host, port, err := net.SplitHostPort(field(f, 3))
		if err != nil || host != "127.0.0.1" || port == "0" {
			t.Fatalf("server line %q: %v", f, err)
		}
		cli := startNode(t, node, []string{"PORT=" + port}, seedClient)
		if got := cli.await("CONNECTED TO: "); field(got, 2) != "127.0.0.1:"+port {
			t.Fatalf("client line %q", got)
		}
		f = srv.await("CONNECTED: ")
		peerHost, peerPort, err := net.SplitHostPort(field(f, 1))
		if err != nil || peerHost != "127.0.0.1" || peerPort == "0" {
			t.Fatalf("server line %q: %v", f, err)
		}
		return srv, cli, port, peerPort
	}

	t.Run("listenerd-net", func(t *testing.T) {
		d := startDaemon(t)
		srv, cli, port, peerPort := exchange(t, seedServer, []string{"LISTENERD_SOCKET=" + d.socket})
		l := listenerAt(t, d, "127.0.0.1:"+port)
		if l.GetSpec().GetHandler().GetStream() == nil {
			t.Fatalf("the seed server's listener is not a stream listener: %v", l.GetSpec())
		}
		events := watchFromStart(t, d, l.GetId())
		attached := events.await("handler_attached", func(ev *listenerdv1.Event) bool { return ev.GetHandlerAttached() != nil })
		opened := events.await("connection_opened", func(ev *listenerdv1.Event) bool { return ev.GetConnectionOpened() != nil })
		connID := opened.GetConnectionOpened().GetConnectionId()
		if got := strconv.Itoa(int(opened.GetConnectionOpened().GetTuple().GetRemotePort())); got != peerPort {
			t.Errorf("the daemon's connection is from port %s, the server printed %s", got, peerPort)
		}
		taken := events.await("connection_taken", func(ev *listenerdv1.Event) bool { return ev.GetConnectionTaken() != nil })
		if taken.GetConnectionTaken().GetConnectionId() != connID ||
			taken.GetConnectionTaken().GetHandlerId() != attached.GetHandlerAttached().GetHandlerId() {
			t.Errorf("taken %v, want %s by %s", taken, connID, attached.GetHandlerAttached().GetHandlerId())
		}
		// The client's 'I am Chuck Norris!' went through the daemon to the
		// server's socket (the seed's server does not read it, nor answer,
		// so the seed's client waits for an answer that never comes).
		eventually(t, func() bool {
			conns, err := d.client.ListConnections(testContext(t), &listenerdv1.ListConnectionsRequest{ListenerId: l.GetId()})
			return err == nil && len(conns.GetConnections()) == 1 && conns.GetConnections()[0].GetBytesIn() == 18
		}, "the client's 18 bytes read by the daemon")

		// The client goes (its FIN), then the server's process: its socket
		// is reset by the daemon, and nothing else is left behind.
		cli.kill()
		srv.kill()
		closed := events.await("connection_closed", func(ev *listenerdv1.Event) bool { return ev.GetConnectionClosed() != nil })
		if c := closed.GetConnectionClosed(); c.GetConnectionId() != connID || c.GetBytesIn() != 18 ||
			c.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_HANDLER_GONE {
			t.Errorf("closed %v", c)
		}
		events.await("handler_detached", func(ev *listenerdv1.Event) bool { return ev.GetHandlerDetached() != nil })
	})

	t.Run("node-net", func(t *testing.T) {
		text, err := os.ReadFile(seedServer)
		if err != nil {
			t.Fatal(err)
		}
		plain := strings.Replace(string(text), "var net = require('../listenerd-net');", "var net = require('net');", 1)
		if plain == string(text) {
			t.Fatal("the fixture does not require ../listenerd-net")
		}
		file := filepath.Join(t.TempDir(), "seed-server-net.js")
		if err := os.WriteFile(file, []byte(plain), 0o644); err != nil {
			t.Fatal(err)
		}
		exchange(t, file, nil)
	})
}

// Half-close both ways, with Node's allowHalfOpen semantics.
func TestNodeNetHalfClose(t *testing.T) {
	node := needNode(t, "the listenerd-net module (examples/node)")
	d := startDaemon(t)

	// The peer's FIN reaches the socket ('end') while it can still write:
	// with allowHalfOpen, it answers after the end, then ends.
	t.Run("peer-ends-first", func(t *testing.T) {
		p, addr := scenario(t, node, d, "reply-end", "--allow-half-open")
		c := dial(t, addr)
		port := localPort(c)
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if f := p.await("end " + port); field(f, 2) != `"hello"` {
			t.Errorf("end line %q", f)
		}
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "reply after end: hello" {
			t.Errorf("read %q, %v; want the reply after the end, then EOF", got, err)
		}
		if f := p.await("close " + port); field(f, 2) != "false" || field(f, 3) != "5" || field(f, 4) != "22" || field(f, 5) != "PEER_CLOSED" {
			t.Errorf("close line %q: want no error, 5 bytes read, 22 written, PEER_CLOSED", f)
		}
	})

	// allowHalfOpen false (Node's default): once the peer ended, the socket
	// ends its side by itself, after what it still had to write.
	t.Run("no-half-open", func(t *testing.T) {
		p, addr := scenario(t, node, d, "upper")
		c := dial(t, addr)
		port := localPort(c)
		if _, err := c.Write([]byte("abc")); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "ABC" {
			t.Errorf("read %q, %v; want ABC then EOF", got, err)
		}
		p.await("end " + port)
		if f := p.await("close " + port); field(f, 2) != "false" || field(f, 5) != "PEER_CLOSED" {
			t.Errorf("close line %q", f)
		}
	})

	// The socket's end() reaches the peer (EOF) while the peer can still
	// write to it, and the socket still reads.
	t.Run("socket-ends-first", func(t *testing.T) {
		p, addr := scenario(t, node, d, "end-first", "--allow-half-open")
		c := dial(t, addr)
		port := localPort(c)
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "bye" {
			t.Fatalf("read %q, %v; want bye then EOF", got, err)
		}
		if _, err := c.Write([]byte("still here")); err != nil {
			t.Fatalf("write after the socket's end: %v", err)
		}
		if f := p.await("data " + port); field(f, 2) != `"still` || field(f, 3) != `here"` {
			t.Errorf("data line %q", f)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		p.await("end " + port)
		if f := p.await("close " + port); field(f, 2) != "false" || field(f, 3) != "10" || field(f, 4) != "3" || field(f, 5) != "PEER_CLOSED" {
			t.Errorf("close line %q: want no error, 10 bytes read, 3 written, PEER_CLOSED", f)
		}
	})
}

// destroy() resets the peer (RST), and a peer's RST reaches the socket as
// Node's ECONNRESET error.
func TestNodeNetReset(t *testing.T) {
	node := needNode(t, "the listenerd-net module (examples/node)")
	d := startDaemon(t)

	t.Run("destroy", func(t *testing.T) {
		p, addr := scenario(t, node, d, "destroy")
		events := watchFromStart(t, d, listenerAt(t, d, addr).GetId())
		c := dial(t, addr)
		port := localPort(c)
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		p.await("destroying " + port)
		buf := make([]byte, 16)
		n, err := c.Read(buf)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("read %q, %v; want ECONNRESET", buf[:n], err)
		}
		if f := p.await("close " + port); field(f, 2) != "false" {
			t.Errorf("close line %q", f)
		}
		closed := events.await("connection_closed", func(ev *listenerdv1.Event) bool { return ev.GetConnectionClosed() != nil })
		if r := closed.GetConnectionClosed().GetReason(); r != listenerdv1.CloseReason_CLOSE_REASON_HANDLER_RESET {
			t.Errorf("closed with %v, want HANDLER_RESET", r)
		}
	})

	t.Run("peer-resets", func(t *testing.T) {
		p, addr := scenario(t, node, d, "quiet")
		c := dial(t, addr)
		port := localPort(c)
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		p.await("data " + port)
		if err := c.SetLinger(0); err != nil {
			t.Fatal(err)
		}
		c.Close() // RST
		if f := p.await("error " + port); field(f, 2) != "ECONNRESET" {
			t.Errorf("error line %q", f)
		}
		if f := p.await("close " + port); field(f, 2) != "true" || field(f, 5) != "RESET" {
			t.Errorf("close line %q: want hadError true, RESET", f)
		}
	})
}

// maxConnections is settable at any time: 0 rejects every new connection
// (Node 21+), each reject is a 'drop' with its five-tuple, the sockets
// already open live on, and lifting it serves again. close() then stops
// accepting and calls back once the last socket is gone.
func TestNodeNetMaxConnections(t *testing.T) {
	node := needNode(t, "the listenerd-net module (examples/node)")
	d := startDaemon(t)
	p, addr := scenario(t, node, d, "quiet")
	id := listenerAt(t, d, addr).GetId()
	limit := func() *uint32 {
		g, err := d.client.GetListener(testContext(t), &listenerdv1.GetListenerRequest{Id: id})
		if err != nil {
			t.Fatal(err)
		}
		return g.GetListener().GetSpec().GetLimits().MaxConnections
	}

	c1 := dial(t, addr)
	p.await("connection " + localPort(c1))

	p.send("max 0")
	eventually(t, func() bool { n := limit(); return n != nil && *n == 0 }, "max_connections 0 in the daemon")
	c2 := dial(t, addr)
	f := p.await("drop ")
	var drop struct {
		LocalAddress, LocalFamily, RemoteAddress, RemoteFamily, Reason string
		LocalPort, RemotePort                                          int
	}
	if err := json.Unmarshal([]byte(strings.Join(f[1:], " ")), &drop); err != nil {
		t.Fatalf("drop line %q: %v", f, err)
	}
	if want := c2.LocalAddr().(*net.TCPAddr); drop.RemotePort != want.Port || drop.RemoteAddress != "127.0.0.1" ||
		drop.RemoteFamily != "IPv4" || drop.LocalAddress != "127.0.0.1" || fmt.Sprint(drop.LocalPort) != strings.Split(addr, ":")[1] ||
		drop.LocalFamily != "IPv4" || drop.Reason != "MAX_CONNECTIONS" {
		t.Errorf("drop %+v, want the five-tuple of %v to %s", drop, want, addr)
	}
	if n, err := c2.Read(make([]byte, 1)); err == nil {
		t.Errorf("the dropped connection read %d bytes", n)
	}
	// The open socket is not affected.
	if _, err := c1.Write([]byte("still")); err != nil {
		t.Fatal(err)
	}
	if f := p.await("data " + localPort(c1)); field(f, 2) != `"still"` {
		t.Errorf("data line %q", f)
	}
	p.send("count")
	if f := p.await("connections "); field(f, 1) != "1" {
		t.Errorf("getConnections: %q, want 1", f)
	}

	p.send("max none")
	eventually(t, func() bool { return limit() == nil }, "max_connections unset in the daemon")
	c3 := dial(t, addr)
	p.await("connection " + localPort(c3))
	p.send("count")
	if f := p.await("connections "); field(f, 1) != "2" {
		t.Errorf("getConnections: %q, want 2", f)
	}

	// close(): the port is free at once; the open sockets live on.
	p.send("close")
	eventually(t, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	}, "the port closed")
	if _, err := c3.Write([]byte("after close")); err != nil {
		t.Fatal(err)
	}
	p.await("data " + localPort(c3))
	c1.Close()
	c3.Close()
	p.await("server-close")
	if f := p.await("closed "); field(f, 1) != "ok" {
		t.Errorf("close callback: %q", f)
	}
	// The daemon lets a closed listener go once its last connection is.
	eventually(t, func() bool {
		g, err := d.client.GetListener(testContext(t), &listenerdv1.GetListenerRequest{Id: id})
		return err != nil || g.GetListener().GetStatus().GetState() == listenerdv1.State_STATE_CLOSED
	}, "the listener closed")
	// The program has nothing left open: it exits by itself.
	p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(guard):
		t.Fatal("the scenario did not exit once its server closed")
	}
	if p.err != nil {
		t.Errorf("scenario exit: %v", p.err)
	}
}

// A port in use is an 'error' with code EADDRINUSE, worded as Node words
// it: a port held by another program, and a port held by another
// listener of the daemon.
func TestNodeNetAddressInUse(t *testing.T) {
	node := needNode(t, "the listenerd-net module (examples/node)")
	d := startDaemon(t)
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	_, port, _ := net.SplitHostPort(held.Addr().String())

	// What Node's own net says, for comparison.
	plain := startNode(t, node, nil, "-e", `require('net').createServer().on('error', (e) =>
		console.log('server-error', e.code, e.syscall, e.address, e.port, e.message)).listen(`+port+`, '127.0.0.1')`)
	want := strings.Join(plain.await("server-error "), " ")

	p := startNode(t, node, []string{"LISTENERD_SOCKET=" + d.socket}, filepath.Join(nodeNetTest, "scenario.js"), "quiet", "--port", port)
	if got := strings.Join(p.await("server-error "), " "); got != want {
		t.Errorf("listenerd-net: %q\nnode's net:    %q", got, want)
	}
	list, err := d.client.ListListeners(testContext(t), &listenerdv1.ListListenersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(list.GetListeners()); n != 0 {
		t.Errorf("a failed listen left %d listeners: %v", n, list.GetListeners())
	}

	// A port another listener of the daemon holds.
	_, addr := scenario(t, node, d, "quiet")
	_, port = mustSplit(t, addr)
	p = startNode(t, node, []string{"LISTENERD_SOCKET=" + d.socket}, filepath.Join(nodeNetTest, "scenario.js"), "quiet", "--port", port)
	if f := p.await("server-error "); field(f, 1) != "EADDRINUSE" || field(f, 2) != "listen" || field(f, 4) != port {
		t.Errorf("listenerd-net on a daemon listener's port: %q", f)
	}
}

func mustSplit(t *testing.T, addr string) (string, string) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}

// A socket that does not read holds back its own peer only: its bytes
// stay in the flow-control windows (the Node side buffers a few frames of
// it, not what the peer writes), while another socket of the same server
// flows; resumed, it reads everything.
func TestNodeNetBackpressure(t *testing.T) {
	node := needNode(t, "the listenerd-net module (examples/node)")
	d := startDaemon(t)
	p, addr := scenario(t, node, d, "pause")

	// More than the kernel's socket buffers and the windows can hold
	// (tcp_rmem goes up to 32 MiB here), so the writer cannot finish
	// while the socket is paused.
	const total = 96 << 20
	c1 := dial(t, addr)
	p.await("paused " + localPort(c1))
	wrote := make(chan error, 1)
	go func() {
		chunk := make([]byte, 64<<10)
		for n := 0; n < total; n += len(chunk) {
			if _, err := c1.Write(chunk); err != nil {
				wrote <- err
				return
			}
		}
		wrote <- c1.CloseWrite()
	}()

	// The second socket echoes 1 MiB meanwhile.
	c2 := dial(t, addr)
	const echo = 1 << 20
	go func() {
		_, _ = c2.Write(make([]byte, echo))
	}()
	if n, err := io.ReadFull(c2, make([]byte, echo)); err != nil {
		t.Fatalf("the second socket echoed %d bytes: %v", n, err)
	}
	select {
	case err := <-wrote:
		t.Fatalf("the paused socket's peer wrote all %d bytes (%v): no backpressure", total, err)
	default:
	}
	p.send("read " + localPort(c1))
	f := p.await("read " + localPort(c1))
	if n, _ := strconv.Atoi(field(f, 2)); n > 1<<20 {
		t.Errorf("the paused socket took in %d bytes: more than its buffer", n)
	}

	p.send("resume")
	if err := <-wrote; err != nil {
		t.Fatalf("write after resume: %v", err)
	}
	if f := p.await("close " + localPort(c1)); field(f, 3) != strconv.Itoa(total) {
		t.Errorf("close line %q: want %d bytes read", f, total)
	}
	if _, err := io.ReadAll(c1); err != nil {
		t.Errorf("the resumed socket's peer: %v", err)
	}
}

// pauseOnConnect: the socket reads nothing until resume().
func TestNodeNetPauseOnConnect(t *testing.T) {
	node := needNode(t, "the listenerd-net module (examples/node)")
	d := startDaemon(t)
	p, addr := scenario(t, node, d, "quiet", "--pause-on-connect")
	id := listenerAt(t, d, addr).GetId()
	c := dial(t, addr)
	port := localPort(c)
	p.await("connection " + port)
	if _, err := c.Write([]byte("early")); err != nil {
		t.Fatal(err)
	}
	// The daemon read the bytes and sent them on the socket's stream ...
	eventually(t, func() bool {
		conns, err := d.client.ListConnections(testContext(t), &listenerdv1.ListConnectionsRequest{ListenerId: id})
		return err == nil && len(conns.GetConnections()) == 1 && conns.GetConnections()[0].GetBytesIn() == 5
	}, "the daemon read 5 bytes")
	// ... where they wait: the socket has read nothing.
	p.send("read " + port)
	if f := p.await("read " + port); field(f, 2) != "0" {
		t.Errorf("paused socket: %q, want 0 bytes read", f)
	}
	p.send("resume")
	p.await("resumed")
	if f := p.await("data " + port); field(f, 2) != `"early"` {
		t.Errorf("data line %q", f)
	}
	if p.printed("data ") < p.printed("resumed") {
		t.Errorf("data before resume()")
	}
}

// A listener closed from outside (ctl close --force) ends the server: its
// sockets close with the daemon's reason, the server gets an 'error' and
// then 'close', and the program exits by itself.
func TestNodeNetClosedElsewhere(t *testing.T) {
	node := needNode(t, "the listenerd-net module (examples/node)")
	d := startDaemon(t)
	p, addr := scenario(t, node, d, "quiet")
	c := dial(t, addr)
	port := localPort(c)
	p.await("connection " + port)
	if _, err := d.client.CloseListener(testContext(t), &listenerdv1.CloseListenerRequest{Id: listenerAt(t, d, addr).GetId(), Force: true}); err != nil {
		t.Fatal(err)
	}
	if f := p.await("close " + port); field(f, 2) != "false" || field(f, 5) != "LISTENER_CLOSED" {
		t.Errorf("close line %q", f)
	}
	if f := p.await("server-error "); field(f, 1) != "ERR_LISTENERD_FAILED_PRECONDITION" {
		t.Errorf("server error line %q", f)
	}
	p.await("server-close")
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Errorf("the socket read %d bytes after its listener closed", n)
	}
	p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(guard):
		t.Fatal("the scenario did not exit once its server closed")
	}
}
