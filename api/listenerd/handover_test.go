package listenerd_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/listenerd/listenerd/api/listenerd"
	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

func handoverClient(t *testing.T) *listenerd.Client {
	t.Helper()
	c, err := listenerd.Dial(listenerd.Options{}) // local: handover by default
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func acceptHanded(t *testing.T, l *listenerd.Listener) *listenerd.TCPConn {
	t.Helper()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	tc, ok := c.(*listenerd.TCPConn)
	if !ok {
		t.Fatalf("Accept gave a %T, want a handed-over *listenerd.TCPConn", c)
	}
	t.Cleanup(func() { tc.Close() })
	_ = tc.SetDeadline(time.Now().Add(testkit.Guard))
	return tc
}

// closedEvent waits for the closed event of connection id.
func closedEvent(t *testing.T, c *listenerd.Client, listener, id string) *listenerdv1.ConnectionClosed {
	t.Helper()
	from := uint64(0)
	var got *listenerdv1.ConnectionClosed
	ctx, cancel := context.WithTimeout(context.Background(), testkit.Guard)
	defer cancel()
	found := errors.New("found")
	err := c.Watch(ctx, &listenerdv1.WatchEventsRequest{ListenerIds: []string{listener}, AfterSequence: &from}, func(e *listenerdv1.Event) error {
		if cl := e.GetConnectionClosed(); cl != nil && cl.GetConnectionId() == id {
			got = cl
			return found
		}
		return nil
	})
	if err != found {
		t.Fatalf("waiting for %s's closed event: %v", id, err)
	}
	return got
}

// A local handler gets the real socket: a TCP stream socket of its own,
// bytes straight through the kernel; its close is reported with the bytes
// each way from TCP_INFO.
func TestHandoverGivesTheRealSocket(t *testing.T) {
	c := handoverClient(t)
	l := listen(t, c)
	peer := testkit.Dial(t, l.Addr().String())
	h := acceptHanded(t, l)
	rc, err := h.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var typ int
	var gerr error
	_ = rc.Control(func(fd uintptr) { typ, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE) })
	if gerr != nil || typ != unix.SOCK_STREAM {
		t.Fatalf("SO_TYPE %d, %v: want a stream socket", typ, gerr)
	}
	if h.RemoteAddr().String() != peer.LocalAddr().String() {
		t.Fatalf("remote %v, want %v", h.RemoteAddr(), peer.LocalAddr())
	}
	// Half-close both ways, on the real socket.
	peer.Write([]byte("over the kernel"))
	peer.CloseWrite()
	got, err := io.ReadAll(h)
	if err != nil || string(got) != "over the kernel" {
		t.Fatalf("handler read %q, %v", got, err)
	}
	h.Write([]byte("and back"))
	h.CloseWrite()
	if got, err := io.ReadAll(peer); err != nil || string(got) != "and back" {
		t.Fatalf("peer read %q, %v", got, err)
	}
	h.Close()
	cl := closedEvent(t, c, l.ID(), h.ID())
	if cl.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_HANDLER_CLOSED || cl.GetBytesIn() != 15 || cl.GetBytesOut() != 8 {
		t.Fatalf("closed %v; want HANDLER_CLOSED, 15 in, 8 out", cl)
	}
}

// Limits hold: with max_connections 10 and 200 dials, never more than 10
// are handed over; closing them frees the slots.
func TestHandoverKeepsTheLimit(t *testing.T) {
	ten := uint32(10)
	c := handoverClient(t)
	l := listen(t, c, listenerd.WithLimits(&listenerdv1.Limits{MaxConnections: &ten}))
	var peers []*net.TCPConn
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			peers = append(peers, p.(*net.TCPConn))
			mu.Unlock()
		}()
	}
	wg.Wait()
	defer func() {
		for _, p := range peers {
			p.Close()
		}
	}()
	var held []*listenerd.TCPConn
	for range 10 {
		held = append(held, acceptHanded(t, l))
	}
	testkit.Eventually(t, func() bool {
		g, err := c.GetListener(context.Background(), &listenerdv1.GetListenerRequest{Id: l.ID()})
		return err == nil && g.GetListener().GetStatus().GetRejectedConnections() == 190
	}, "190 rejected")
	g, _ := c.GetListener(context.Background(), &listenerdv1.GetListenerRequest{Id: l.ID()})
	if st := g.GetListener().GetStatus(); st.GetActiveConnections() != 10 || st.GetAcceptedConnections() != 10 {
		t.Fatalf("status %v: want 10 open and 10 accepted", st)
	}
	for _, h := range held {
		h.Close()
	}
	testkit.Eventually(t, func() bool {
		g, err := c.GetListener(context.Background(), &listenerdv1.GetListenerRequest{Id: l.ID()})
		return err == nil && g.GetListener().GetStatus().GetActiveConnections() == 0
	}, "the slots freed by the handler's closes")
	testkit.Dial(t, l.Addr().String())
	acceptHanded(t, l)
}

// CloseConnection shuts a handed-over connection down for its handler too.
func TestHandoverCloseConnection(t *testing.T) {
	c := handoverClient(t)
	l := listen(t, c)
	peer := testkit.Dial(t, l.Addr().String())
	h := acceptHanded(t, l)
	if _, err := c.CloseConnection(context.Background(), &listenerdv1.CloseConnectionRequest{Id: h.ID()}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the handler read %v after the kick, want EOF", err)
	}
	if _, err := peer.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the peer read %v after the kick, want EOF", err)
	}
	if cl := closedEvent(t, c, l.ID(), h.ID()); cl.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_KICKED {
		t.Fatalf("closed %v, want KICKED", cl)
	}
}

// A handler that closes with SetLinger(0), Go's way to reset a TCP
// connection, resets the peer: the daemon, whose copy goes last, does not
// end it gracefully first.
func TestHandoverResetByTheHandler(t *testing.T) {
	c := handoverClient(t)
	l := listen(t, c)
	peer := testkit.Dial(t, l.Addr().String())
	h := acceptHanded(t, l)
	if err := h.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := peer.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the peer read %v after the handler's reset, want ECONNRESET", err)
	}
	if cl := closedEvent(t, c, l.ID(), h.ID()); cl.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_HANDLER_CLOSED {
		t.Fatalf("closed %v, want HANDLER_CLOSED", cl)
	}
}

// handlerProcess is a handler in a process of its own: it attaches (with
// handover), says "attached", then "accepted <id>" for each socket, and
// holds them until it is killed.
func handlerProcess(ref string) {
	c, err := listenerd.Dial(listenerd.Options{})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	l, err := c.Attach(context.Background(), ref)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("attached")
	var held []net.Conn
	for {
		conn, err := l.Accept()
		if err != nil {
			os.Exit(1)
		}
		held = append(held, conn)
		fmt.Println("accepted", conn.(*listenerd.TCPConn).ID())
	}
}

// A handler killed with SIGKILL: the sockets it held are closed
// (HANDLER_GONE) and their slots freed.
func TestHandoverHandlerKilled(t *testing.T) {
	c := handoverClient(t)
	l := listen(t, c, listenerd.WithConcurrency(1)) // this process takes one at most
	mine := testkit.Dial(t, l.Addr().String())
	mc := acceptHanded(t, l)

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "LISTENERD_TEST_HANDLER="+l.ID())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := bufio.NewScanner(out)
	next := func() string {
		if !lines.Scan() {
			t.Fatalf("the handler process ended: %v", lines.Err())
		}
		return lines.Text()
	}
	if s := next(); s != "attached" {
		t.Fatalf("handler: %q", s)
	}
	var theirs []*net.TCPConn
	var ids []string
	for range 3 {
		theirs = append(theirs, testkit.Dial(t, l.Addr().String()))
		s := next()
		id, ok := strings.CutPrefix(s, "accepted ")
		if !ok {
			t.Fatalf("handler: %q", s)
		}
		ids = append(ids, id)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if cl := closedEvent(t, c, l.ID(), id); cl.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_HANDLER_GONE {
			t.Fatalf("closed %v, want HANDLER_GONE", cl)
		}
	}
	for _, p := range theirs {
		if _, err := p.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("a killed handler's peer read %v, want a reset", err)
		}
	}
	// Mine goes on.
	mine.Write([]byte("ok"))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(mc, buf); err != nil || string(buf) != "ok" {
		t.Fatalf("the other handler's socket: %q, %v", buf, err)
	}
	testkit.Eventually(t, func() bool {
		g, err := c.GetListener(context.Background(), &listenerdv1.GetListenerRequest{Id: l.ID()})
		return err == nil && g.GetListener().GetStatus().GetActiveConnections() == 1
	}, "the killed handler's slots freed")
}

// A peer of another uid is refused the descriptors, whatever secret it
// brings; the secret stays good for its handler.
func TestHandoverRefusesAnotherUID(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a child as another user")
	}
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 is not installed (the other user's client)")
	}
	c := handoverClient(t)
	r, err := c.CreateListener(context.Background(), &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{
		Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Stream{Stream: &listenerdv1.StreamHandler{}}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseListener(context.Background(), &listenerdv1.CloseListenerRequest{Id: r.GetListener().GetId()})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := c.AttachHandler(ctx, &listenerdv1.AttachHandlerRequest{ListenerId: r.GetListener().GetId(), Handover: true})
	if err != nil {
		t.Fatal(err)
	}
	first, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	att := first.GetAttached()
	// Let the other user reach the socket, so that the daemon's own check
	// is what refuses it: the directories of this test binary's daemon
	// only (TestMain made them), never the system's temporary directory.
	for d := dir(att.GetHandoverPath()); strings.HasPrefix(d, testDir+"/") || d == testDir; d = dir(d) {
		if fi, err := os.Stat(d); err == nil {
			if err := os.Chmod(d, fi.Mode().Perm()|0o011); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.Chmod(att.GetHandoverPath(), 0o666); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("python3", "-c", `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(sys.argv[1])
s.send(sys.argv[2].encode())
print(repr(s.recv(16)))`, att.GetHandoverPath(), att.GetHandoverSecret())
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	outb, err := cmd.CombinedOutput()
	if strings.Contains(string(outb), "'ok'") {
		t.Fatalf("a peer of uid 65534 was served: %s", outb)
	}
	if !strings.Contains(string(outb), "b''") && err == nil {
		t.Fatalf("want the side connection closed at once: %s", outb)
	}
	// The rightful handler, with the same secret, is served.
	side, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: att.GetHandoverPath(), Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer side.Close()
	side.Write([]byte(att.GetHandoverSecret()))
	buf := make([]byte, 8)
	_ = side.SetReadDeadline(time.Now().Add(testkit.Guard))
	if n, err := side.Read(buf); err != nil || string(buf[:n]) != "ok" {
		t.Fatalf("the handler's side connection: %q, %v", buf[:n], err)
	}
}

func dir(p string) string {
	i := strings.LastIndex(p, "/")
	if i <= 0 {
		return "/"
	}
	return p[:i]
}
