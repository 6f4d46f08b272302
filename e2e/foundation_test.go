package e2e

import (
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

func listenJSON(t *testing.T, d *daemon, args ...string) *listenerdv1.Listener {
	t.Helper()
	out := d.mustCtl(append([]string{"listen", "-o", "json"}, args...)...)
	var l listenerdv1.Listener
	unmarshalLine(t, strings.TrimSpace(out), &l)
	if l.GetId() == "" || l.GetStatus().GetBoundAddress() == "" {
		t.Fatalf("listen printed %q", out)
	}
	return &l
}

// The walk-through of the README: an echo listener, a plain TCP client,
// and the watch stream showing that client's connection.
func TestEchoListenerAndWatch(t *testing.T) {
	d := startDaemon(t)
	l := listenJSON(t, d, "--port", "0", "--mode", "echo", "--name", "chuck")
	// Watch from the snapshot's sequence, so nothing after it is missed
	// however long ctl takes to start.
	list, err := d.client.ListListeners(testContext(t), &listenerdv1.ListListenersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	w := d.ctlStream("watch", "-o", "json", "--since", strconv.FormatUint(list.GetSequence(), 10), "chuck")

	c := dial(t, l.GetStatus().GetBoundAddress())
	msg := "I am Chuck Norris!"
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo %q, %v", got, err)
	}
	port := uint32(c.LocalAddr().(*net.TCPAddr).Port)
	c.Close()

	var opened, closed *listenerdv1.Event
	for closed == nil {
		var e listenerdv1.Event
		unmarshalLine(t, w.next(), &e)
		if e.GetListenerId() != l.GetId() {
			t.Fatalf("event of another listener: %v", &e)
		}
		switch {
		case e.GetConnectionOpened() != nil:
			opened = &e
		case e.GetConnectionClosed() != nil:
			closed = &e
		}
	}
	if opened == nil {
		t.Fatal("closed event without an opened event before it")
	}
	if opened.GetConnectionOpened().GetTuple().GetRemotePort() != port ||
		closed.GetConnectionClosed().GetTuple().GetRemotePort() != port {
		t.Fatalf("events for port %d: %v / %v", port, opened, closed)
	}
	if opened.GetSequence() >= closed.GetSequence() {
		t.Fatalf("opened %d not before closed %d", opened.GetSequence(), closed.GetSequence())
	}
	if err := w.interrupt(); err != nil {
		t.Fatalf("ctl watch on Ctrl-C: %v", err)
	}
}

// 200 concurrent dials against --max-connections 10: at most 10 open, the
// rest closed by the daemon, and as many rejected events.
func TestStormAgainstMaxConnections(t *testing.T) {
	const dials, limit = 200, 10
	d := startDaemon(t)
	l := listenJSON(t, d, "--port", "0", "--max-connections", strconv.Itoa(limit), "--backlog", "1024")
	addr := l.GetStatus().GetBoundAddress()

	var wg sync.WaitGroup
	conns := make(chan net.Conn, dials)
	for range dials {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Errorf("dial: %v", err)
				return
			}
			conns <- c
		}()
	}
	wg.Wait()
	close(conns)
	var held []net.Conn
	for c := range conns {
		held = append(held, c)
		defer c.Close()
	}

	// Every dial ends as an opened or a rejected event; read them all from
	// the history.
	after := uint64(0)
	stream, err := d.client.WatchEvents(testContext(t), &listenerdv1.WatchEventsRequest{
		ListenerIds: []string{l.GetId()}, AfterSequence: &after,
		Kinds: []listenerdv1.EventKind{listenerdv1.EventKind_EVENT_KIND_CONNECTION_OPENED, listenerdv1.EventKind_EVENT_KIND_CONNECTION_REJECTED}})
	if err != nil {
		t.Fatal(err)
	}
	opened, rejected := 0, 0
	for opened+rejected < dials {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range resp.GetEvents() {
			if r := e.GetConnectionRejected(); r != nil {
				if r.GetReason() != listenerdv1.RejectReason_REJECT_REASON_MAX_CONNECTIONS || r.GetTuple().GetRemotePort() == 0 {
					t.Fatalf("rejected event %v", e)
				}
				rejected++
			} else {
				opened++
			}
		}
	}
	if opened != limit || rejected != dials-limit {
		t.Fatalf("%d opened, %d rejected events; want %d and %d", opened, rejected, limit, dials-limit)
	}
	var got listenerdv1.Listener
	unmarshalLine(t, strings.TrimSpace(d.mustCtl("get", "-o", "json", l.GetId())), &got)
	if st := got.GetStatus(); st.GetActiveConnections() != limit || st.GetRejectedConnections() != dials-limit {
		t.Fatalf("status %v: want %d active, %d rejected", st, limit, dials-limit)
	}
	// The rejected clients see their connection closed by the daemon; the
	// served ones stay open until the listener is closed.
	var ended sync.WaitGroup
	var mu sync.Mutex
	eof := 0
	for _, c := range held {
		ended.Add(1)
		go func() {
			defer ended.Done()
			_ = c.SetReadDeadline(time.Now().Add(guard))
			if _, err := c.Read(make([]byte, 1)); err != nil && !os.IsTimeout(err) {
				mu.Lock()
				eof++
				mu.Unlock()
			}
		}()
	}
	d.mustCtl("close", l.GetId(), "--force")
	ended.Wait()
	if eof != dials {
		t.Fatalf("%d of %d clients saw their connection closed", eof, dials)
	}
}

// ls, get, limit and close through ctl, by id and by name.
func TestCtlLifecycle(t *testing.T) {
	d := startDaemon(t)
	l := listenJSON(t, d, "--port", "0", "--name", "web", "--max-connections", "5")
	if out := d.mustCtl("ls"); !strings.Contains(out, l.GetId()) || !strings.Contains(out, "web") {
		t.Fatalf("ls: %q", out)
	}
	var got listenerdv1.Listener
	unmarshalLine(t, strings.TrimSpace(d.mustCtl("get", "web", "-o", "json")), &got)
	if got.GetId() != l.GetId() || got.GetSpec().GetLimits().GetMaxConnections() != 5 {
		t.Fatalf("get by name: %v", &got)
	}
	d.mustCtl("limit", "web", "--max-connections", "0")
	unmarshalLine(t, strings.TrimSpace(d.mustCtl("get", l.GetId(), "-o", "json")), &got)
	if got.GetSpec().GetLimits().MaxConnections == nil || got.GetSpec().GetLimits().GetMaxConnections() != 0 {
		t.Fatalf("after limit 0: %v", got.GetSpec().GetLimits())
	}
	d.mustCtl("limit", "web", "--unlimited")
	unmarshalLine(t, strings.TrimSpace(d.mustCtl("get", l.GetId(), "-o", "json")), &got)
	if got.GetSpec().GetLimits().MaxConnections != nil {
		t.Fatalf("after --unlimited: %v", got.GetSpec().GetLimits())
	}
	d.mustCtl("close", "web", "--drain", "0s")
	if ln, err := net.Listen("tcp", l.GetStatus().GetBoundAddress()); err != nil {
		t.Fatalf("port not free after ctl close: %v", err)
	} else {
		ln.Close()
	}

	// Errors: one line on stderr, non-zero exit, no raw rpc error.
	for _, args := range [][]string{
		{"get", "nope"},
		{"listen", "--port", "70000"},
		{"close", "nope"},
	} {
		r := d.ctl(args...)
		if r.code == 0 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || strings.Contains(r.stderr, "rpc error") {
			t.Fatalf("ctl %v: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
}

// grpcurl-style discovery: reflection lists the service.
func TestReflectionListsService(t *testing.T) {
	d := startDaemon(t)
	stream, err := grpc_reflection_v1.NewServerReflectionClient(d.conn).ServerReflectionInfo(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&grpc_reflection_v1.ServerReflectionRequest{
		MessageRequest: &grpc_reflection_v1.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.CloseSend()
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	if !strings.Contains(strings.Join(names, " "), "listenerd.v1.ListenerService") {
		t.Fatalf("reflection lists %v", names)
	}
}

// SIGTERM with a watch stream open and a connection held: the stream ends,
// the connection is closed, and the daemon exits 0 (checked in stop).
func TestShutdownWithWatcherAndConnection(t *testing.T) {
	d := startDaemon(t, "--shutdown-timeout", "1s")
	l := listenJSON(t, d, "--port", "0")
	stream, err := d.client.WatchEvents(testContext(t), &listenerdv1.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	c := dial(t, l.GetStatus().GetBoundAddress())
	d.stop()
	_ = c.SetReadDeadline(time.Now().Add(guard))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection outlived the daemon")
	}
	for {
		_, err := stream.Recv()
		if err == nil {
			continue
		}
		if code := status.Code(err); code != codes.Unavailable {
			t.Fatalf("watch stream ended with %v (%v), want UNAVAILABLE", code, err)
		}
		break
	}
}

// A connection from a denied source is closed at once, with a rejected
// event naming the ACL, and never counts as accepted.
func TestDeniedSource(t *testing.T) {
	d := startDaemon(t, "--ephemeral")
	l := listenJSON(t, d, "--port", "0", "--mode", "echo", "--allow", "127.0.0.0/8", "--deny", "127.0.0.2/32")
	after := uint64(0)
	stream, err := d.client.WatchEvents(testContext(t), &listenerdv1.WatchEventsRequest{ListenerIds: []string{l.GetId()}, AfterSequence: &after})
	if err != nil {
		t.Fatal(err)
	}
	c := testkit.DialFrom(t, "127.0.0.2", l.GetStatus().GetBoundAddress())
	_ = c.SetReadDeadline(time.Now().Add(guard))
	if n, err := c.Read(make([]byte, 1)); err == nil || n != 0 {
		t.Fatalf("denied client read %d, %v; want its connection closed", n, err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range resp.GetEvents() {
			if e.GetConnectionOpened() != nil {
				t.Fatal("denied source was accepted")
			}
			if r := e.GetConnectionRejected(); r != nil {
				if r.GetReason() != listenerdv1.RejectReason_REJECT_REASON_DENIED_BY_ACL || r.GetTuple().GetRemoteAddress() != "127.0.0.2" {
					t.Fatalf("rejected %v", r)
				}
				var got listenerdv1.Listener
				unmarshalLine(t, strings.TrimSpace(d.mustCtl("get", l.GetId(), "-o", "json")), &got)
				if got.GetStatus().GetAcceptedConnections() != 0 || got.GetStatus().GetRejectedConnections() != 1 {
					t.Fatalf("status %v", got.GetStatus())
				}
				return
			}
		}
	}
}
