package listener

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/testkit"
)

func fault(name string, kind events.FaultKind) Fault {
	return Fault{Name: name, Kind: kind, Probability: 1}
}

func addFault(t *testing.T, m *Manager, l *Listener, f Fault) {
	t.Helper()
	if err := m.AddFault(l.ID(), f); err != nil {
		t.Fatalf("add fault %s: %v", f.Name, err)
	}
}

func removeFault(t *testing.T, m *Manager, l *Listener, name string) {
	t.Helper()
	if err := m.RemoveFault(l.ID(), name); err != nil {
		t.Fatalf("remove fault %s: %v", name, err)
	}
}

// connOf returns the listener's connection whose remote port is c's local
// port.
func connOf(t *testing.T, l *Listener, c net.Conn) ConnInfo {
	t.Helper()
	var found ConnInfo
	testkit.Eventually(t, func() bool {
		conns, _ := l.Connections()
		for _, ci := range conns {
			if ci.Tuple.Remote.Port() == localPort(c) {
				found = ci
				return true
			}
		}
		return false
	}, "the connection listed")
	return found
}

func closedWith(evs []events.Event, reason events.CloseReason) []events.Event {
	var out []events.Event
	for _, e := range evs {
		if e.Kind == events.KindConnectionClosed && e.Close == reason {
			out = append(out, e)
		}
	}
	return out
}

// A reset fault added at runtime resets live connections with a real RST
// (ECONNRESET at the client), on the fast path and on the fault path, and
// their closed events name it.
func TestFaultResetLiveConnections(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}})
	w := newWatch(t, m, l.ID())
	fast := testkit.Dial(t, l.Info().Bound) // served before any fault: the fast path
	echoOnce(t, fast)
	addFault(t, m, l, Fault{Name: "slow", Kind: events.FaultLatency, Latency: time.Millisecond, Probability: 1})
	slow := testkit.Dial(t, l.Info().Bound) // on the fault path
	echoOnce(t, slow)
	addFault(t, m, l, fault("rst", events.FaultReset))
	for _, c := range []net.Conn{fast, slow} {
		if _, err := io.ReadAll(c); !isRST(err) {
			t.Fatalf("read after the reset fault: %v, want ECONNRESET", err)
		}
	}
	evs := w.until(func(evs []events.Event) bool { return len(closedWith(evs, events.CloseFault)) == 2 })
	for _, e := range closedWith(evs, events.CloseFault) {
		if e.Detail == nil || e.Detail.Fault == nil || e.Detail.Fault.Fault.Name != "rst" {
			t.Fatalf("closed event %+v does not name the fault", e)
		}
	}
	if n := count(evs, events.KindFaultApplied); n < 3 {
		t.Fatalf("%d fault_applied events, want at least 3 (slow once, rst twice)", n)
	}
}

// A reset after N bytes passes exactly N, then resets.
func TestFaultResetAfterBytes(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"},
		Faults: []Fault{{Name: "r", Kind: events.FaultReset, Direction: events.FaultOut, Bytes: 3, Probability: 1}}})
	c := testkit.Dial(t, l.Info().Bound)
	if _, err := c.Write([]byte("abcdef")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 0, 8)
	buf := make([]byte, 8)
	var err error
	for err == nil {
		var n int
		n, err = c.Read(buf)
		got = append(got, buf[:n]...)
	}
	if !isRST(err) || len(got) > 3 {
		t.Fatalf("got %q then %v; want at most \"abc\" then ECONNRESET", got, err)
	}
}

// Timeout passes nothing and keeps the connection open; removing it passes
// what it held, once.
func TestFaultTimeoutHoldsThenResumes(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}, Faults: []Fault{fault("stall", events.FaultTimeout)}})
	c := testkit.Dial(t, l.Info().Bound)
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, func() bool { return connOf(t, l, c).BytesIn == 4 }, "the bytes read")
	ci := connOf(t, l, c)
	if ci.BytesOut != 0 {
		t.Fatalf("%d bytes out under timeout, want 0", ci.BytesOut)
	}
	if len(ci.Faults) != 1 || !ci.Faults[0].Applies {
		t.Fatalf("draws %+v, want stall applying", ci.Faults)
	}
	removeFault(t, m, l, "stall")
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "held" {
		t.Fatalf("after removal: %q, %v", got, err)
	}
	echoOnce(t, c)
}

// Limit data passes exactly N bytes, then the client reads the end.
func TestFaultLimitData(t *testing.T) {
	const n = 1000
	for _, dir := range []events.FaultDirection{events.FaultOut, events.FaultIn} {
		t.Run(dir.String(), func(t *testing.T) {
			m := newManager(t)
			l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"},
				Faults: []Fault{{Name: "cap", Kind: events.FaultLimitData, Direction: dir, Bytes: n, Probability: 1}}})
			w := newWatch(t, m, l.ID())
			c := testkit.Dial(t, l.Info().Bound)
			go func() { _, _ = c.Write(bytes.Repeat([]byte("x"), 3*n)) }()
			got, err := io.ReadAll(c)
			if err != nil || len(got) != n {
				t.Fatalf("read %d bytes, %v; want exactly %d then the end", len(got), err, n)
			}
			c.Close()
			evs := w.until(countAtLeast(events.KindConnectionClosed, 1))
			if cl := closedWith(evs, events.CloseFault); len(cl) != 1 || cl[0].Detail.Fault.Fault.Name != "cap" {
				t.Fatalf("closed events %+v, want one closed by the fault cap", evs)
			}
		})
	}
}

// Probability 0 changes nothing: 1,000 connections echo and end with a
// FIN, none is reset, no fault applies.
func TestFaultProbabilityZero(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}, Faults: []Fault{
		{Name: "never", Kind: events.FaultReset, Probability: 0},
		{Name: "never-slow", Kind: events.FaultLatency, Latency: time.Hour, Probability: 0},
	}})
	w := newWatch(t, m, l.ID())
	const conns = 1000
	for i := range conns {
		c, err := net.Dial("tcp", l.Info().Bound)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(guard))
		echoOnce(t, c)
		_ = c.(*net.TCPConn).CloseWrite()
		if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
			t.Fatalf("connection %d: %q, %v; want a clean end", i, rest, err)
		}
		c.Close()
	}
	evs := w.until(countAtLeast(events.KindConnectionClosed, conns))
	if n := count(evs, events.KindFaultApplied); n != 0 {
		t.Fatalf("%d fault_applied events under probability 0", n)
	}
	if cl := closedWith(evs, events.ClosePeerClosed); len(cl) != conns {
		t.Fatalf("%d of %d closed as peer_closed", len(cl), conns)
	}
}

// Probability 0.5 picks about half of 1,000 connections (binomial: 400-600
// is over 6 standard deviations), and adding, changing or removing another
// fault flips none of them.
func TestFaultProbabilityHalfIsKept(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Faults: []Fault{{Name: "half", Kind: events.FaultLatency, Latency: time.Millisecond, Probability: 0.5}}})
	const conns = 1000
	for range conns {
		testkit.Dial(t, l.Info().Bound)
	}
	testkit.Eventually(t, func() bool { cs, _ := l.Connections(); return len(cs) == conns }, "every connection listed")
	picked := func() map[string]bool {
		cs, _ := l.Connections()
		out := map[string]bool{}
		for _, c := range cs {
			for _, f := range c.Faults {
				if f.Fault == "half" && f.Applies {
					out[c.ID] = true
				}
			}
		}
		return out
	}
	before := picked()
	if n := len(before); n < 400 || n > 600 {
		t.Fatalf("%d of %d connections picked at probability 0.5, want 400-600", n, conns)
	}
	same := func(when string) {
		t.Helper()
		after := picked()
		if len(after) != len(before) {
			t.Fatalf("%s: %d picked, was %d", when, len(after), len(before))
		}
		for id := range before {
			if !after[id] {
				t.Fatalf("%s: %s flipped", when, id)
			}
		}
	}
	other := Fault{Name: "other", Kind: events.FaultBandwidth, Rate: 1 << 20, Probability: 0.5}
	addFault(t, m, l, other)
	same("another fault added")
	other.Probability = 0.9
	if err := m.UpdateFault(l.ID(), other); err != nil {
		t.Fatal(err)
	}
	same("another fault changed")
	removeFault(t, m, l, "other")
	same("another fault removed")
}

// A source CIDR scope touches only its sources.
func TestFaultSourceScope(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}, Faults: []Fault{
		{Name: "two", Kind: events.FaultReset, Probability: 1, Sources: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}},
	}})
	if err := resetOnOpen("127.0.0.2", l.Info().Bound); !isRST(err) {
		t.Fatalf("from 127.0.0.2: %v, want ECONNRESET", err)
	}
	from1 := testkit.DialFrom(t, "127.0.0.1", l.Info().Bound)
	echoOnce(t, from1)
	if ci := connOf(t, l, from1); len(ci.Faults) != 1 || ci.Faults[0].Applies {
		t.Fatalf("127.0.0.1's draws %+v, want the fault listed, not applying", ci.Faults)
	}
}

// Removing faults mid-stream loses and duplicates nothing: a megabyte
// echoed through bandwidth, slicer, latency and a timeout, each taken off
// while bytes flow, comes back with the same SHA-256.
func TestFaultRemovalMidStream(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}, Faults: []Fault{
		{Name: "bw", Kind: events.FaultBandwidth, Rate: 512 << 10, Burst: 8 << 10, Probability: 1},
		{Name: "cut", Kind: events.FaultSlicer, SliceSize: 700, SliceVariation: 300, Direction: events.FaultOut, Probability: 1},
		{Name: "lat", Kind: events.FaultLatency, Latency: time.Millisecond, Jitter: time.Millisecond, Probability: 1},
	}})
	c := testkit.Dial(t, l.Info().Bound)
	data := make([]byte, 1<<20)
	_, _ = rand.Read(data)
	go func() {
		_, _ = c.Write(data)
		_ = c.CloseWrite()
	}()
	h := sha256.New()
	var mu sync.Mutex
	got := 0
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			mu.Lock()
			h.Write(buf[:n])
			got += n
			mu.Unlock()
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				done <- err
				return
			}
		}
	}()
	received := func(n int) func() bool {
		return func() bool { mu.Lock(); defer mu.Unlock(); return got >= n }
	}
	testkit.Eventually(t, received(64<<10), "64 KiB echoed")
	addFault(t, m, l, fault("stall", events.FaultTimeout))
	removeFault(t, m, l, "bw")
	removeFault(t, m, l, "lat")
	removeFault(t, m, l, "stall")
	testkit.Eventually(t, received(256<<10), "256 KiB echoed")
	removeFault(t, m, l, "cut")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	if got != len(data) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("echoed %d bytes of %d, SHA-256 equal: %v", got, len(data), bytes.Equal(h.Sum(nil), want[:]))
	}
}

// Every fault kind that passes bytes passes the half-close: through a
// forward, the client's FIN reaches the upstream after its bytes, and the
// upstream's reply, sent after that FIN, comes back whole.
func TestFaultHalfClosePasses(t *testing.T) {
	kinds := []Fault{
		{Kind: events.FaultLatency, Latency: time.Millisecond, Jitter: time.Millisecond},
		{Kind: events.FaultBandwidth, Rate: 1 << 20, Burst: 4},
		{Kind: events.FaultSlicer, SliceSize: 2, SliceVariation: 1},
		{Kind: events.FaultSlowClose, Delay: time.Millisecond},
		{Kind: events.FaultLimitData, Bytes: 1 << 20},
		{Kind: events.FaultReset, Bytes: 1 << 20},
	}
	for _, f := range kinds {
		t.Run(f.Kind.String(), func(t *testing.T) {
			f.Name, f.Probability = "f", 1
			m := newManager(t)
			addr, accept := upstream(t)
			l := create(t, m, Spec{Handler: ForwardTo(addr, 0), Faults: []Fault{f}})
			c := testkit.Dial(t, l.Info().Bound)
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			_ = c.CloseWrite()
			up := accept()
			req, err := io.ReadAll(up) // to the client's FIN
			if err != nil {
				t.Fatal(err)
			}
			if _, err := up.Write(append([]byte("reply to "), req...)); err != nil {
				t.Fatal(err)
			}
			up.Close()
			got, err := io.ReadAll(c)
			if err != nil || string(got) != "reply to hello" {
				t.Fatalf("through %s: %q, %v", f.Kind, got, err)
			}
		})
	}
}

// A refuse fault answers RST: the kernel completes the handshake, and the
// client's connect, or its first read, is ECONNRESET; the rejected event
// names the fault.
// delay_accept holds a connection, then serves it.
func TestFaultAcceptSide(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}, Faults: []Fault{fault("no", events.FaultRefuse)}})
	w := newWatch(t, m, l.ID())
	if err := resetOnOpen("127.0.0.1", l.Info().Bound); !isRST(err) {
		t.Fatalf("refused: %v, want ECONNRESET", err)
	}
	evs := w.until(countAtLeast(events.KindConnectionRejected, 1))
	for _, e := range evs {
		if e.Kind == events.KindConnectionRejected && (e.Reject != events.RejectFault || e.Detail.Fault.Fault.Name != "no") {
			t.Fatalf("rejected event %+v, want reason fault naming no", e)
		}
	}
	if got := l.Info().RejectedBy[events.RejectFault]; got != 1 {
		t.Fatalf("rejected by fault: %d, want 1", got)
	}
	removeFault(t, m, l, "no")
	addFault(t, m, l, Fault{Name: "wait", Kind: events.FaultDelayAccept, Delay: 10 * time.Millisecond, Probability: 1})
	c2 := testkit.Dial(t, l.Info().Bound)
	echoOnce(t, c2)
	evs = w.until(countAtLeast(events.KindConnectionOpened, 1))
	applied, opened := -1, -1
	for i, e := range evs {
		switch e.Kind {
		case events.KindFaultApplied:
			applied = i
		case events.KindConnectionOpened:
			opened = i
		}
	}
	if applied < 0 || opened < applied {
		t.Fatalf("events %+v: want delay_accept applied before the connection opened", evs)
	}
}

// Faults are seen in the event stream: added, applied, removed, expired.
func TestFaultEvents(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}})
	w := newWatch(t, m, l.ID())
	addFault(t, m, l, Fault{Name: "lat", Kind: events.FaultLatency, Latency: time.Millisecond, Probability: 1})
	if err := m.AddFault(l.ID(), fault("lat", events.FaultTimeout)); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("a second fault lat: %v, want ErrAlreadyExists", err)
	}
	if err := m.RemoveFault(l.ID(), "none"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("removing an unknown fault: %v, want ErrNotFound", err)
	}
	if err := m.AddFault(l.ID(), Fault{Name: "x", Kind: events.FaultLatency, Probability: 2}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("probability 2: %v, want ErrInvalid", err)
	}
	c := testkit.Dial(t, l.Info().Bound)
	echoOnce(t, c)
	addFault(t, m, l, Fault{Name: "brief", Kind: events.FaultSlicer, SliceSize: 1, Probability: 1, Expires: time.Now().Add(time.Millisecond)})
	removeFault(t, m, l, "lat")
	evs := w.until(countAtLeast(events.KindFaultRemoved, 2))
	var expired, applied bool
	for _, e := range evs {
		switch e.Kind {
		case events.KindFaultRemoved:
			expired = expired || e.Detail.Fault.Expired && e.Detail.Fault.Fault.Name == "brief"
		case events.KindFaultApplied:
			applied = applied || e.Detail.Fault.Fault.Name == "lat" && e.Conn != 0
		}
	}
	if !expired || !applied || count(evs, events.KindFaultAdded) != 2 {
		t.Fatalf("events %+v: want lat added and applied, brief added and expired", evs)
	}
	if fs := l.Faults(); len(fs) != 0 {
		t.Fatalf("faults left: %+v", fs)
	}
}

// isRST reports a real RST: ECONNRESET, nothing looser.
func isRST(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// resetOnOpen connects from src and reads to the end, returning the error
// of the connect or of the read: an RST sent as the connection opens can
// beat connect(2)'s return on loopback, and either then fails with it.
func resetOnOpen(src, addr string) error {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(guard))
	_, err = io.ReadAll(c)
	return err
}

// A changed fault applies anew on the same draws: a reset an hour away,
// changed to at once, resets the live connection; one changed to a latency
// has its timer stopped, and the connection goes on under the latency.
func TestFaultUpdateReappliesOnLiveConnections(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}})
	late := Fault{Name: "r", Kind: events.FaultReset, Delay: time.Hour, Probability: 1}
	addFault(t, m, l, late)
	a := testkit.Dial(t, l.Info().Bound)
	echoOnce(t, a)
	soon := late
	soon.Delay = 0
	if err := m.UpdateFault(l.ID(), soon); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(a); !isRST(err) {
		t.Fatalf("after the change to at once: %v, want ECONNRESET", err)
	}
	removeFault(t, m, l, "r")
	other := Fault{Name: "s", Kind: events.FaultReset, Delay: time.Hour, Probability: 1}
	addFault(t, m, l, other)
	b := testkit.Dial(t, l.Info().Bound)
	echoOnce(t, b)
	other.Kind, other.Latency, other.Delay = events.FaultLatency, time.Millisecond, 0
	if err := m.UpdateFault(l.ID(), other); err != nil {
		t.Fatal(err)
	}
	echoOnce(t, b)
	if ci := connOf(t, l, b); len(ci.Faults) != 1 || ci.Faults[0].Fault != "s" || !ci.Faults[0].Applies {
		t.Fatalf("draws after the change: %+v", ci.Faults)
	}
}
