package listener

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// guard bounds every wait in these tests; it is a safety net, not a timing
// assertion.
const guard = 30 * time.Second

func newManager(t *testing.T) *Manager {
	t.Helper()
	m := NewManager(events.NewBus(events.Options{}), nil, Options{})
	t.Cleanup(func() { m.Shutdown(0) })
	return m
}

func limit(n int64) Limits { return Limits{MaxConnections: AtMost(n)} }

func create(t *testing.T, m *Manager, spec Spec) *Listener {
	t.Helper()
	l, err := m.Create(context.Background(), "", spec)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	return l
}

// watch collects the events of one listener.
type watch struct {
	t   *testing.T
	w   *events.Watcher
	buf []events.Event
}

func newWatch(t *testing.T, m *Manager, id string) *watch {
	t.Helper()
	after := uint64(0)
	w, _, err := m.Bus().Watch(events.Filter{Listeners: []string{id}}, &after)
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	t.Cleanup(w.Close)
	return &watch{t: t, w: w}
}

// until reads events until cond holds over everything read so far.
func (w *watch) until(cond func([]events.Event) bool) []events.Event {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	for !cond(w.buf) {
		batch, _, err := w.w.Next(ctx, make([]events.Event, 0, 256))
		if err != nil {
			w.t.Fatalf("waiting for events (have %d): %v", len(w.buf), err)
		}
		w.buf = append(w.buf, batch...)
	}
	return w.buf
}

func count(evs []events.Event, k events.Kind) int {
	n := 0
	for _, e := range evs {
		if e.Kind == k {
			n++
		}
	}
	return n
}

func countAtLeast(k events.Kind, n int) func([]events.Event) bool {
	return func(evs []events.Event) bool { return count(evs, k) >= n }
}

func localPort(c net.Conn) uint16 { return uint16(c.LocalAddr().(*net.TCPAddr).Port) }

func TestCreateBindsBeforeReplyAndReportsEphemeralPort(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{})
	info := l.Info()
	host, port, err := net.SplitHostPort(info.Bound)
	if err != nil || host != "127.0.0.1" || port == "0" {
		t.Fatalf("bound address %q: want 127.0.0.1 with a real port", info.Bound)
	}
	if info.State != StateListening {
		t.Fatalf("state %v, want listening", info.State)
	}
	// The port is open the moment Create returns.
	c := testkit.Dial(t, info.Bound)
	c.Close()
}

func TestEcho(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}})
	w := newWatch(t, m, l.ID())
	c := testkit.Dial(t, l.Info().Bound)
	msg := "I am Chuck Norris!"
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo: %q, %v", got, err)
	}
	c.Close()
	evs := w.until(countAtLeast(events.KindConnectionClosed, 1))
	var opened, closed events.Event
	for _, e := range evs {
		switch e.Kind {
		case events.KindConnectionOpened:
			opened = e
		case events.KindConnectionClosed:
			closed = e
		}
	}
	if opened.Seq == 0 || opened.Seq >= closed.Seq {
		t.Fatalf("opened seq %d must come before closed seq %d", opened.Seq, closed.Seq)
	}
	if opened.Tuple.Remote.Port() != localPort(c) {
		t.Fatalf("opened remote port %d, client port %d", opened.Tuple.Remote.Port(), localPort(c))
	}
	if closed.BytesIn != uint64(len(msg)) || closed.BytesOut != uint64(len(msg)) || closed.Close != events.ClosePeerClosed {
		t.Fatalf("closed event %+v: want %d bytes each way, peer closed", closed, len(msg))
	}
	if info := l.Info(); info.BytesIn != uint64(len(msg)) || info.Accepted != 1 || info.Active != 0 {
		t.Fatalf("counters %+v", info)
	}
}

// A storm of concurrent dials against max 10 never sees more than 10 open:
// exactly 10 are served, the rest are closed at once with a rejected event
// that carries their five-tuple.
func TestMaxConnectionsStorm(t *testing.T) {
	const dials, max = 200, 10
	m := newManager(t)
	l := create(t, m, Spec{Limits: limit(max), Backlog: 1024})
	w := newWatch(t, m, l.ID())
	addr := l.Info().Bound

	conns := make([]net.Conn, dials)
	var wg sync.WaitGroup
	errs := make(chan error, dials)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("dial: %v", err)
	}
	for _, c := range conns {
		t.Cleanup(func() { c.Close() })
	}
	evs := w.until(func(evs []events.Event) bool {
		return count(evs, events.KindConnectionOpened)+count(evs, events.KindConnectionRejected) >= dials
	})
	opened, rejected := map[uint16]bool{}, map[uint16]bool{}
	for _, e := range evs {
		switch e.Kind {
		case events.KindConnectionOpened:
			opened[e.Tuple.Remote.Port()] = true
		case events.KindConnectionRejected:
			if e.Reject != events.RejectMaxConnections {
				t.Fatalf("reject reason %v", e.Reject)
			}
			rejected[e.Tuple.Remote.Port()] = true
		}
	}
	if len(opened) != max || len(rejected) != dials-max {
		t.Fatalf("opened %d, rejected %d; want %d and %d", len(opened), len(rejected), max, dials-max)
	}
	if got := l.Info(); got.Active != max || got.Rejected != dials-max {
		t.Fatalf("active %d rejected %d", got.Active, got.Rejected)
	}
	// Every rejected client sees its connection closed; the served ones
	// stay open.
	for _, c := range conns {
		p := localPort(c)
		if opened[p] == rejected[p] {
			t.Fatalf("client port %d: opened %v rejected %v", p, opened[p], rejected[p])
		}
		if rejected[p] {
			_ = c.SetReadDeadline(time.Now().Add(guard))
			if n, err := c.Read(make([]byte, 1)); err == nil || n != 0 {
				t.Fatalf("rejected client %d read %d, %v; want closed", p, n, err)
			}
		}
	}
}

// With clients that come and go, the open count (opened minus closed, in
// sequence order) never passes the limit.
func TestMaxConnectionsChurn(t *testing.T) {
	const dials, maxConns = 300, 10
	m := newManager(t)
	l := create(t, m, Spec{Limits: limit(maxConns), Handler: HandlerSpec{Kind: "echo"}, Backlog: 1024})
	w := newWatch(t, m, l.ID())
	addr := l.Info().Bound
	var wg sync.WaitGroup
	for range dials {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Errorf("dial: %v", err)
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(guard))
			_, _ = c.Write([]byte{1})
			_, _ = c.Read(make([]byte, 1))
		}()
	}
	wg.Wait()
	evs := w.until(func(evs []events.Event) bool {
		return count(evs, events.KindConnectionClosed)+count(evs, events.KindConnectionRejected) >= dials
	})
	open, peak := 0, 0
	for _, e := range evs {
		switch e.Kind {
		case events.KindConnectionOpened:
			open++
		case events.KindConnectionClosed:
			open--
		}
		peak = max(peak, open)
	}
	if peak > maxConns || peak == 0 {
		t.Fatalf("peak open %d, limit %d", peak, maxConns)
	}
	if o, r := count(evs, events.KindConnectionOpened), count(evs, events.KindConnectionRejected); o+r != dials {
		t.Fatalf("opened %d + rejected %d != %d", o, r, dials)
	}
}

func TestMaxConnectionsZeroRejectsAll(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Limits: limit(0)})
	w := newWatch(t, m, l.ID())
	c := testkit.Dial(t, l.Info().Bound)
	if n, err := c.Read(make([]byte, 1)); err == nil || n != 0 {
		t.Fatalf("read %d, %v: want closed", n, err)
	}
	evs := w.until(countAtLeast(events.KindConnectionRejected, 1))
	if count(evs, events.KindConnectionOpened) != 0 {
		t.Fatal("a connection was opened with max_connections 0")
	}
}

func TestLimitsChangeAtRuntime(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Limits: limit(2)})
	w := newWatch(t, m, l.ID())
	addr := l.Info().Bound
	a, b := testkit.Dial(t, addr), testkit.Dial(t, addr)
	w.until(countAtLeast(events.KindConnectionOpened, 2))

	// Lowering the limit closes nobody.
	if _, err := m.SetLimits(l.ID(), func(Limits) (Limits, error) { return limit(1), nil }); err != nil {
		t.Fatal(err)
	}
	c := testkit.Dial(t, addr)
	w.until(countAtLeast(events.KindConnectionRejected, 1))
	if got := l.Info().Active; got != 2 {
		t.Fatalf("active %d after lowering the limit; want 2", got)
	}
	if n, err := c.Read(make([]byte, 1)); err == nil || n != 0 {
		t.Fatalf("over-limit client read %d, %v", n, err)
	}
	// Raising it (here: unlimited) admits the next one, on the same socket.
	if _, err := m.SetLimits(l.ID(), func(Limits) (Limits, error) { return Limits{}, nil }); err != nil {
		t.Fatal(err)
	}
	_ = testkit.Dial(t, addr)
	evs := w.until(countAtLeast(events.KindConnectionOpened, 3))
	if count(evs, events.KindLimitsChanged) != 2 {
		t.Fatalf("limits changed events: %d", count(evs, events.KindLimitsChanged))
	}
	_, _ = a, b
}

func TestOverflowBacklogLeavesConnectionsQueued(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Limits: Limits{MaxConnections: AtMost(1), Overflow: OverflowBacklog}})
	w := newWatch(t, m, l.ID())
	addr := l.Info().Bound
	a := testkit.Dial(t, addr)
	w.until(countAtLeast(events.KindConnectionOpened, 1))
	b := testkit.Dial(t, addr) // completes in the kernel, waits in the accept queue
	a.Close()
	evs := w.until(countAtLeast(events.KindConnectionOpened, 2))
	if count(evs, events.KindConnectionRejected) != 0 {
		t.Fatal("BACKLOG overflow rejected a connection")
	}
	var second events.Event
	for _, e := range evs {
		if e.Kind == events.KindConnectionOpened {
			second = e
		}
	}
	if second.Tuple.Remote.Port() != localPort(b) {
		t.Fatalf("second opened port %d, want %d", second.Tuple.Remote.Port(), localPort(b))
	}
}

// BACKLOG set at runtime, at the limit, while the accept loop already
// waits in Accept: the next connection waits for a slot, as the ones
// behind it wait in the kernel's queue; it is not rejected.
func TestOverflowBacklogSetAtRuntimeRejectsNobody(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{})
	w := newWatch(t, m, l.ID())
	addr := l.Info().Bound
	a, _ := testkit.Dial(t, addr), testkit.Dial(t, addr)
	w.until(countAtLeast(events.KindConnectionOpened, 2))
	// The limits change right after the third accept, before its
	// admission: exactly as if they had changed while the loop waited in
	// Accept.
	changed := make(chan error, 1)
	hook := func() {
		_, err := m.SetLimits(l.ID(), func(Limits) (Limits, error) { return Limits{MaxConnections: AtMost(2), Overflow: OverflowBacklog}, nil })
		changed <- err
	}
	testHookAccepted.Store(&hook)
	t.Cleanup(func() { testHookAccepted.Store(nil) })
	c := testkit.Dial(t, addr)
	select {
	case err := <-changed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(guard):
		t.Fatalf("the third connection was not accepted within %v", guard)
	}
	testHookAccepted.Store(nil)
	a.Close() // frees a slot for it
	evs := w.until(func(evs []events.Event) bool {
		return count(evs, events.KindConnectionRejected) > 0 || count(evs, events.KindConnectionOpened) >= 3
	})
	if n := count(evs, events.KindConnectionRejected); n != 0 {
		t.Fatalf("%d connections rejected under BACKLOG overflow", n)
	}
	if last := evs[len(evs)-1]; last.Kind != events.KindConnectionOpened || last.Tuple.Remote.Port() != localPort(c) {
		t.Fatalf("last event %+v, want the third connection opened", last)
	}
}

func TestHalfOpenOffEndsOurSideAfterFlush(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}})
	w := newWatch(t, m, l.ID())
	c := testkit.Dial(t, l.Info().Bound)
	if _, err := c.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	got, err := io.ReadAll(c) // returns at the daemon's FIN
	if err != nil || string(got) != "abc" {
		t.Fatalf("read %q, %v", got, err)
	}
	evs := w.until(countAtLeast(events.KindConnectionClosed, 1))
	if count(evs, events.KindConnectionHalfClosed) != 0 {
		t.Fatal("half-closed event without allow_half_open")
	}
	if e := evs[len(evs)-1]; e.Close != events.ClosePeerClosed {
		t.Fatalf("close reason %v", e.Close)
	}
}

func TestHalfOpenOnKeepsOurSideOpen(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}, AllowHalfOpen: true})
	w := newWatch(t, m, l.ID())
	c := testkit.Dial(t, l.Info().Bound)
	if _, err := c.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	got := make([]byte, 3)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "abc" {
		t.Fatalf("read %q, %v", got, err)
	}
	evs := w.until(countAtLeast(events.KindConnectionHalfClosed, 1))
	if count(evs, events.KindConnectionClosed) != 0 || l.Info().Active != 1 {
		t.Fatalf("connection closed after the peer's FIN with allow_half_open")
	}
	conns, _ := l.Connections()
	if len(conns) != 1 {
		t.Fatalf("connections: %d", len(conns))
	}
	if err := m.CloseConnection(conns[0].ID, false); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) || n != 0 {
		t.Fatalf("after kick: %d, %v; want EOF", n, err)
	}
	evs = w.until(countAtLeast(events.KindConnectionClosed, 1))
	if e := evs[len(evs)-1]; e.Close != events.CloseKicked {
		t.Fatalf("close reason %v, want kicked", e.Close)
	}
}

// rxQueue reads the receive queue of the TCP socket local->remote from
// /proc/net/tcp.
func rxQueue(t *testing.T, local, remote uint16) (int, bool) {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Skipf("no /proc/net/tcp: %v", err)
	}
	defer f.Close()
	want := fmt.Sprintf(":%04X", local)
	wantRemote := fmt.Sprintf(":%04X", remote)
	s := bufio.NewScanner(f)
	for s.Scan() {
		fs := strings.Fields(s.Text())
		if len(fs) < 5 || !strings.HasSuffix(fs[1], want) || !strings.HasSuffix(fs[2], wantRemote) {
			continue
		}
		q := strings.Split(fs[4], ":")
		n, _ := strconv.ParseInt(q[1], 16, 64)
		return int(n), true
	}
	return 0, false
}

func TestPauseOnConnectHoldsUnread(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}, PauseOnConnect: true})
	w := newWatch(t, m, l.ID())
	c := testkit.Dial(t, l.Info().Bound)
	w.until(countAtLeast(events.KindConnectionOpened, 1))
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	// The bytes reach the daemon's socket and stay there, unread.
	testkit.Eventually(t, func() bool {
		n, ok := rxQueue(t, localPortOf(l), localPort(c))
		return ok && n == 5
	}, "the daemon's receive queue to hold the 5 bytes")
	conns, _ := l.Connections()
	if len(conns) != 1 || conns[0].BytesIn != 0 {
		t.Fatalf("paused connection read: %+v", conns)
	}
	if err := m.CloseConnection(conns[0].ID, true); err != nil {
		t.Fatal(err)
	}
	evs := w.until(countAtLeast(events.KindConnectionClosed, 1))
	if e := evs[len(evs)-1]; e.BytesIn != 0 || e.BytesOut != 0 || e.Close != events.CloseKicked {
		t.Fatalf("closed event %+v", e)
	}
}

func localPortOf(l *Listener) uint16 {
	_, p, _ := net.SplitHostPort(l.Info().Bound)
	n, _ := strconv.Atoi(p)
	return uint16(n)
}

func TestCloseFreesPortAtOnceAndDrains(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}})
	w := newWatch(t, m, l.ID())
	addr := l.Info().Bound
	c := testkit.Dial(t, addr)
	w.until(countAtLeast(events.KindConnectionOpened, 1))
	info, err := m.Close(l.ID(), time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != StateDraining {
		t.Fatalf("state %v, want draining", info.State)
	}
	// The port is free for a new listener the moment Close returns.
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("port not free after close: %v", err)
	}
	ln.Close()
	// The open connection is still served while draining.
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatalf("draining connection not served: %v", err)
	}
	c.Close()
	evs := w.until(countAtLeast(events.KindListenerClosed, 1))
	if d := evs[len(evs)-1].Detail; d.Drained != 1 || d.Destroyed != 0 {
		t.Fatalf("listener closed: drained %d destroyed %d", d.Drained, d.Destroyed)
	}
	<-l.Done()
	if _, err := m.Get(l.ID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("closed listener still listed: %v", err)
	}
}

// A listener with nothing to drain is CLOSED when Close returns, its
// listener_closed event already published.
func TestCloseWithNoConnectionsIsClosedOnReturn(t *testing.T) {
	m := newManager(t)
	l, err := m.Create(context.Background(), "web", Spec{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := m.Close(l.ID(), time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != StateClosed {
		t.Fatalf("state %v on return, want closed", info.State)
	}
	for _, ref := range []string{l.ID(), "web"} {
		if _, err := m.Get(ref); !errors.Is(err, ErrNotFound) {
			t.Fatalf("get %s after the close: %v, want not found (out of the table)", ref, err)
		}
	}
	select {
	case <-l.Done():
	default:
		t.Fatal("Done not closed on return")
	}
	head, zero := m.Bus().Head(), uint64(0) // what was published before Close returned
	r, _, err := m.Bus().Watch(events.Filter{}, &zero)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	found := false
	for seen := uint64(0); seen < head; {
		batch, _, err := r.Next(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range batch {
			seen = e.Seq
			found = found || (e.Seq <= head && e.Listener == l.ID() && e.Kind == events.KindListenerClosed)
		}
	}
	if !found {
		t.Fatal("listener_closed not published on return")
	}
}

// A name given up by a closing listener is not found, and the error says
// which id still reaches the listener.
func TestClosingNameSaysWhichID(t *testing.T) {
	m := newManager(t)
	l, err := m.Create(context.Background(), "web", Spec{})
	if err != nil {
		t.Fatal(err)
	}
	w := newWatch(t, m, l.ID())
	testkit.Dial(t, l.Info().Bound)
	w.until(countAtLeast(events.KindConnectionOpened, 1))
	if _, err := m.Close("web", time.Hour, false); err != nil {
		t.Fatal(err)
	}
	_, err = m.Get("web")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), l.ID()+" is closing and gave its name up") {
		t.Fatalf("get by the given-up name: %v", err)
	}
	if _, err := m.Resolve([]string{"web"}); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), l.ID()) {
		t.Fatalf("resolve the given-up name: %v", err)
	}
	if _, err := m.Get("nope"); !errors.Is(err, ErrNotFound) || strings.Contains(err.Error(), "closing") {
		t.Fatalf("get an unknown name: %v", err)
	}
}

func TestCloseForceDestroys(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{})
	w := newWatch(t, m, l.ID())
	c := testkit.Dial(t, l.Info().Bound)
	w.until(countAtLeast(events.KindConnectionOpened, 1))
	if _, err := m.Close(l.ID(), time.Hour, true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection survived a forced close")
	}
	evs := w.until(countAtLeast(events.KindListenerClosed, 1))
	if d := evs[len(evs)-1].Detail; d.Drained != 0 || d.Destroyed != 1 {
		t.Fatalf("listener closed: drained %d destroyed %d", d.Drained, d.Destroyed)
	}
	for _, e := range evs {
		if e.Kind == events.KindConnectionClosed && e.Close != events.CloseListenerClosed {
			t.Fatalf("close reason %v", e.Close)
		}
	}
}

func TestCreateErrors(t *testing.T) {
	m := newManager(t)
	l, err := m.Create(context.Background(), "web", Spec{})
	if err != nil {
		t.Fatal(err)
	}
	port := localPortOf(l)
	if got, err := m.Get("web"); err != nil || got != l {
		t.Fatalf("get by name: %v", err)
	}
	tests := []struct {
		name string
		spec Spec
		want error
	}{
		{"web", Spec{}, ErrAlreadyExists},
		{"", Spec{Port: port}, ErrAddressInUse},
		{"Bad Name", Spec{}, ErrInvalid},
		{"ln-0123abcd", Spec{}, ErrInvalid},
		{"", Spec{Host: "no such host.invalid"}, ErrInvalid},
		{"", Spec{Host: "192.0.2.1"}, ErrInvalid},
		{"", Spec{Backlog: -1}, ErrInvalid},
		{"", Spec{Handler: HandlerSpec{Kind: "forward"}}, ErrInvalid},
		{"", Spec{Host: "224.0.0.1"}, ErrInvalid},
		{"", Spec{Host: "255.255.255.255"}, ErrInvalid},
		{"", Spec{Host: "ff02::1"}, ErrInvalid},
		{"", Spec{Host: "fe80::1"}, ErrInvalid}, // link-local: needs a zone
	}
	for _, up := range []string{"127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1:abc", ":80", ":", "127.0.0.1",
		"h" + strings.Repeat("x", 300) + ":80", "a\x00b:80", "a b:80", "-a.example:80", "a..b:80",
		"127.0.0.1:+1", "127.0.0.1:-1", "127.0.0.1:0x50", "127.0.0.1:http/x"} {
		tests = append(tests, struct {
			name string
			spec Spec
			want error
		}{"", Spec{Handler: ForwardTo(up, 0)}, ErrInvalid})
	}
	for _, tc := range tests {
		_, err := m.Create(context.Background(), tc.name, tc.spec)
		if !errors.Is(err, tc.want) {
			t.Errorf("create %q %+v: %v, want %v", tc.name, tc.spec, err, tc.want)
		}
	}
	if ls, _ := m.List(); len(ls) != 1 {
		t.Fatalf("failed creates left listeners: %d", len(ls))
	}
	if _, err := m.Get("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get unknown: %v", err)
	}
	if err := m.CloseConnection(l.ID()+".99", false); !errors.Is(err, ErrNotFound) {
		t.Fatalf("kick unknown: %v", err)
	}
}

// Like Node's listen(port, host): 0.0.0.0 is IPv4 only, and the bound
// address says so.
func TestWildcardIPv4IsIPv4Only(t *testing.T) {
	probe, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	probe.Close()
	m := newManager(t)
	l := create(t, m, Spec{Host: "0.0.0.0", Handler: HandlerSpec{Kind: "echo"}})
	bound := l.Info().Bound
	port := localPortOf(l)
	if want := fmt.Sprintf("0.0.0.0:%d", port); bound != want {
		t.Fatalf("bound %s, want %s", bound, want)
	}
	c := testkit.Dial(t, fmt.Sprintf("127.0.0.1:%d", port))
	c.Close()
	if c6, err := net.Dial("tcp6", fmt.Sprintf("[::1]:%d", port)); err == nil {
		c6.Close()
		t.Fatalf("a listener on 0.0.0.0 accepted a connection on [::1]:%d", port)
	}
}

func TestForward(t *testing.T) {
	m := newManager(t)
	up := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}})
	fw := create(t, m, Spec{Handler: ForwardTo(up.Info().Bound, 0)})
	w := newWatch(t, m, fw.ID())
	c := testkit.Dial(t, fw.Info().Bound)
	msg := strings.Repeat("forward me ", 10000)
	go func() {
		_, _ = c.Write([]byte(msg))
		_ = c.CloseWrite() // passed through: the upstream echo ends, and so do we
	}()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != msg {
		t.Fatalf("forwarded %d bytes, %v; want %d", len(got), err, len(msg))
	}
	evs := w.until(countAtLeast(events.KindConnectionClosed, 1))
	if e := evs[len(evs)-1]; e.BytesIn != uint64(len(msg)) || e.BytesOut != uint64(len(msg)) || e.Close != events.ClosePeerClosed {
		t.Fatalf("closed event %+v", e)
	}
}

func TestForwardUpstreamDown(t *testing.T) {
	m := newManager(t)
	dead := create(t, m, Spec{})
	addr := dead.Info().Bound
	if _, err := m.Close(dead.ID(), 0, true); err != nil {
		t.Fatal(err)
	}
	fw := create(t, m, Spec{Handler: ForwardTo(addr, 0)})
	w := newWatch(t, m, fw.ID())
	c := testkit.Dial(t, fw.Info().Bound)
	if _, err := io.ReadAll(c); err != nil {
		t.Logf("client read: %v", err)
	}
	evs := w.until(countAtLeast(events.KindConnectionClosed, 1))
	if e := evs[len(evs)-1]; e.Close != events.CloseUpstreamFailed || e.Detail == nil || e.Detail.Error == "" {
		t.Fatalf("closed event %+v", e)
	}
}

// The OS's refusals to bind map to the API's errors: out of descriptors
// is a limit reached, an address that cannot be bound an invalid host.
func TestBindErrors(t *testing.T) {
	for _, tc := range []struct {
		errno syscall.Errno
		want  error
	}{
		{syscall.EADDRINUSE, ErrAddressInUse},
		{syscall.EACCES, ErrPermission},
		{syscall.EADDRNOTAVAIL, ErrInvalid},
		{syscall.EINVAL, ErrInvalid},
		{syscall.EMFILE, ErrLimit},
		{syscall.ENFILE, ErrLimit},
	} {
		err := bindError("[::1]:80", &net.OpError{Op: "listen", Net: "tcp", Err: os.NewSyscallError("bind", tc.errno)})
		if !errors.Is(err, tc.want) {
			t.Errorf("bind failing with %v: %v, want %v", tc.errno, err, tc.want)
		}
	}
}
