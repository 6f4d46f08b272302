package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/testkit"
	"github.com/listenerd/listenerd/internal/version"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// guard bounds every wait; a safety net, never a timing assertion.
const guard = 30 * time.Second

// rig is a real manager whose metrics are collected, with a channel that
// receives each connection duration observed.
type rig struct {
	t        *testing.T
	m        *Metrics
	mgr      *listener.Manager
	bus      *events.Bus
	observed chan string
}

func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{t: t, m: New(), bus: events.NewBus(events.Options{}), observed: make(chan string, 64)}
	r.mgr = listener.NewManager(r.bus, nil, listener.Options{ConnClosed: func(id string, d time.Duration) {
		r.m.ObserveConnection(id, d)
		r.observed <- id
	}})
	r.m.Collect(r.mgr, r.bus)
	t.Cleanup(func() { r.mgr.Shutdown(0) })
	return r
}

func (r *rig) create(name string, spec listener.Spec) *listener.Listener {
	r.t.Helper()
	l, err := r.mgr.Create(context.Background(), name, spec)
	if err != nil {
		r.t.Fatal(err)
	}
	return l
}

func (r *rig) addr(l *listener.Listener) string {
	r.t.Helper()
	in, err := r.mgr.Get(l.ID())
	if err != nil {
		r.t.Fatal(err)
	}
	return in.Info().Bound
}

// waitEvent waits for an event of kind on listener id, from the bus's
// history, after *from; it advances *from past it.
func (r *rig) waitEvent(id string, kind events.Kind, from *uint64) events.Event {
	r.t.Helper()
	w, _, err := r.bus.Watch(events.Filter{Listeners: []string{id}, Kinds: []events.Kind{kind}}, from)
	if err != nil {
		r.t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	batch, _, err := w.Next(ctx, nil)
	if err != nil {
		r.t.Fatalf("waiting for kind %d on %s: %v", kind, id, err)
	}
	*from = batch[0].Seq
	return batch[0]
}

func (r *rig) waitObserved(id string) {
	r.t.Helper()
	select {
	case got := <-r.observed:
		if got != id {
			r.t.Fatalf("duration observed for %s, want %s", got, id)
		}
	case <-time.After(guard):
		r.t.Fatal("no connection duration observed")
	}
}

// series finds the metric of family name whose labels include want.
func (r *rig) series(name string, want map[string]string) *dto.Metric {
	r.t.Helper()
	mfs, err := r.m.Registry().Gather()
	if err != nil {
		r.t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if got[k] != v {
					continue next
				}
			}
			return m
		}
	}
	return nil
}

func (r *rig) value(name string, labels map[string]string) float64 {
	r.t.Helper()
	m := r.series(name, labels)
	if m == nil {
		r.t.Fatalf("no series %s%v", name, labels)
	}
	switch {
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	}
	r.t.Fatalf("%s%v is neither gauge nor counter", name, labels)
	return 0
}

func (r *rig) expect(name string, labels map[string]string, want float64) {
	r.t.Helper()
	if got := r.value(name, labels); got != want {
		r.t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// listenerd_build_info names the build in its labels.
func TestBuildInfo(t *testing.T) {
	r := newRig(t)
	v := version.Get()
	r.expect("listenerd_build_info", map[string]string{"version": v.Version, "revision": v.Revision,
		"dirty": strconv.FormatBool(v.Dirty), "goversion": runtime.Version()}, 1)
}

// The per-listener series follow real connections: opened, echoed,
// rejected over the limit and by the ACL, closed (with their durations),
// and the listener's series go when it is gone.
func TestCollectorFollowsConnections(t *testing.T) {
	r := newRig(t)
	l := r.create("web", listener.Spec{Limits: listener.Limits{MaxConnections: listener.AtMost(1)}, Handler: listener.HandlerSpec{Kind: "echo"}})
	id, addr := l.ID(), r.addr(l)
	lbl := map[string]string{"listener": id, "name": "web"}
	var seq uint64

	r.expect("listenerd_listener_info", map[string]string{"listener": id, "name": "web", "address": addr, "mode": "echo", "state": "listening"}, 1)
	r.expect("listenerd_listener_active_connections", lbl, 0)
	r.expect("listenerd_listener_max_connections", lbl, 1)
	if h := r.series("listenerd_connection_duration_seconds", lbl).GetHistogram(); h == nil || h.GetSampleCount() != 0 || len(h.GetBucket()) != len(DurationBuckets) {
		t.Fatalf("empty histogram: %v", h)
	}

	c := testkit.Dial(t, addr)
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	r.expect("listenerd_listener_active_connections", lbl, 1)
	r.expect("listenerd_listener_accepted_connections_total", lbl, 1)
	r.expect("listenerd_listener_bytes_total", map[string]string{"listener": id, "direction": "in"}, 5)
	r.expect("listenerd_listener_bytes_total", map[string]string{"listener": id, "direction": "out"}, 5)

	// Over the limit: rejected for max_connections.
	testkit.Dial(t, addr)
	r.waitEvent(id, events.KindConnectionRejected, &seq)
	r.expect("listenerd_listener_rejected_connections_total", map[string]string{"listener": id, "reason": "max_connections"}, 1)
	r.expect("listenerd_listener_rejected_connections_total", map[string]string{"listener": id, "reason": "rate_limit"}, 0)

	c.Close()
	r.waitObserved(id)
	r.expect("listenerd_listener_active_connections", lbl, 0)
	h := r.series("listenerd_connection_duration_seconds", lbl).GetHistogram()
	if h.GetSampleCount() != 1 || h.GetSampleSum() <= 0 || h.GetBucket()[len(h.GetBucket())-1].GetCumulativeCount() != 1 {
		t.Fatalf("histogram after one connection: %v", h)
	}

	// A second listener that denies loopback: rejected by the ACL.
	deny := r.create("", listener.Spec{Limits: listener.Limits{},
		Deny: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	testkit.Dial(t, r.addr(deny))
	r.waitEvent(deny.ID(), events.KindConnectionRejected, new(uint64(0)))
	r.expect("listenerd_listener_rejected_connections_total", map[string]string{"listener": deny.ID(), "name": "", "reason": "denied_by_acl"}, 1)
	r.expect("listenerd_listener_rejected_connections_total", map[string]string{"listener": id, "reason": "denied_by_acl"}, 0)
	if r.series("listenerd_listener_max_connections", map[string]string{"listener": deny.ID()}) != nil {
		t.Error("max_connections series for an unlimited listener")
	}

	// Closed and gone: its series and its histogram go.
	if _, err := r.mgr.Close(id, 0, true); err != nil {
		t.Fatal(err)
	}
	<-l.Done()
	r.waitGone(id)
	for _, name := range []string{"listenerd_listener_info", "listenerd_listener_active_connections", "listenerd_connection_duration_seconds"} {
		if m := r.series(name, map[string]string{"listener": id}); m != nil {
			t.Errorf("%s of a listener gone: %v", name, m)
		}
	}
	if _, ok := r.m.durations.Load(id); ok {
		t.Error("the histogram of a listener gone is kept")
	}
	r.expect("listenerd_listener_active_connections", map[string]string{"listener": deny.ID()}, 0)
}

// waitGone waits until the manager no longer holds the listener: it leaves
// the list just after its closed event, and nothing announces that.
func (r *rig) waitGone(id string) {
	r.t.Helper()
	testkit.Eventually(r.t, func() bool {
		_, err := r.mgr.Get(id)
		return err != nil
	}, "listener "+id+" to leave the manager")
}

// The bus's counters: watchers open, events published, slow watchers cut
// and the events they had not been sent.
func TestCollectorBusCounters(t *testing.T) {
	m := New()
	bus := events.NewBus(events.Options{History: 8192, WatcherLag: 10})
	mgr := listener.NewManager(bus, nil, listener.Options{ConnClosed: m.ObserveConnection})
	defer mgr.Shutdown(0)
	m.Collect(mgr, bus)
	r := &rig{t: t, m: m, mgr: mgr, bus: bus}

	w, _, err := bus.Watch(events.Filter{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r.expect("listenerd_watchers", nil, 1)
	for range 20 {
		bus.Publish(events.Event{Listener: "ln-00000000", Kind: events.KindConnectionOpened})
	}
	r.expect("listenerd_events_published_total", nil, 20)
	r.expect("listenerd_watchers_cut_total", nil, 1)
	r.expect("listenerd_watch_events_dropped_total", nil, 11)
	w.Close()
	r.expect("listenerd_watchers", nil, 0)
}

func TestCheckAddr(t *testing.T) {
	for _, tt := range []struct {
		addr   string
		remote bool
		ok     bool
	}{
		{"127.0.0.1:9464", false, true},
		{"[::1]:9464", false, true},
		{"localhost:9464", false, true}, // checked once bound
		{"127.0.0.2:0", false, true},
		{":9464", false, false},
		{"0.0.0.0:9464", false, false},
		{"[::]:9464", false, false},
		{"192.0.2.1:9464", false, false},
		{"192.0.2.1:9464", true, true},
		{":9464", true, true},
		{"9464", false, false},
		{"127.0.0.1:http", false, false},
		{"127.0.0.1:70000", false, false},
	} {
		err := CheckAddr(tt.addr, tt.remote)
		var refused *AddrError
		if (err == nil) != tt.ok || (err != nil && !errors.As(err, &refused)) {
			t.Errorf("CheckAddr(%q, remote=%v) = %v (%T), want ok=%v or an *AddrError", tt.addr, tt.remote, err, err, tt.ok)
		}
	}
}

// A host name is checked once bound: off loopback it is refused, as an
// *AddrError, unless allowed. (No host name resolves off loopback on a
// test machine, so the bound address is given.)
func TestCheckBound(t *testing.T) {
	off := &net.TCPAddr{IP: net.ParseIP("192.0.2.2"), Port: 9464}
	for _, tt := range []struct {
		bound  net.Addr
		remote bool
		ok     bool
	}{
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 9464}, false, true},
		{&net.TCPAddr{IP: net.ParseIP("::1"), Port: 9464}, false, true},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:127.0.0.1"), Port: 9464}, false, true},
		{off, false, false},
		{off, true, true},
	} {
		err := checkBound("metrics.example:9464", tt.bound, tt.remote)
		var refused *AddrError
		if (err == nil) != tt.ok || (err != nil && (!errors.As(err, &refused) || !strings.Contains(err.Error(), "metrics.example is bound to 192.0.2.2:9464"))) {
			t.Errorf("checkBound(%v, remote=%v) = %v, want ok=%v or an *AddrError naming the host and the address", tt.bound, tt.remote, err, tt.ok)
		}
	}
	// Listen refuses what CheckAddr refuses with the same type, and a
	// taken port (the machine, not the flag) with another.
	for _, addr := range []string{":0", "no-such-host.invalid:0"} {
		if _, err := Listen(addr, false); !errors.As(err, new(*AddrError)) {
			t.Errorf("Listen(%q) = %v, want an *AddrError", addr, err)
		}
	}
	ln, err := Listen("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := Listen(ln.Addr().String(), false); err == nil || errors.As(err, new(*AddrError)) {
		t.Errorf("Listen on a taken port = %v, want an error that is not an *AddrError", err)
	}
}

// The endpoint serves the registry over HTTP, and Stop joins its goroutine.
func TestServe(t *testing.T) {
	r := newRig(t)
	l := r.create("", listener.Spec{Limits: listener.Limits{}})
	ln, err := Listen("localhost:0", false)
	if err != nil {
		t.Fatal(err)
	}
	s := r.m.Start(ln, nil)
	defer s.Stop(time.Second)

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: guard}
	resp, err := client.Get("http://" + s.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := `listenerd_listener_active_connections{listener="` + l.ID() + `",name=""} 0`
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) ||
		!strings.Contains(string(body), "go_goroutines") || !strings.Contains(string(body), "listenerd_watchers 0") {
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, body)
	}
	resp, err = client.Post("http://"+s.Addr().String()+"/metrics", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /metrics: %s", resp.Status)
	}
}

// A registry of the collector alone passes client_golang's consistency
// checks (labels match their descriptions, no duplicate series).
func TestCollectorIsConsistent(t *testing.T) {
	r := newRig(t)
	r.create("a", listener.Spec{Limits: listener.Limits{MaxConnections: listener.AtMost(3)}})
	r.create("b", listener.Spec{Limits: listener.Limits{}})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(&collector{m: r.m, src: r.mgr, bus: r.bus})
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}
