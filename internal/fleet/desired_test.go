package fleet_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/fleet"
	"github.com/listenerd/listenerd/internal/fleet/natstest"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/service"
	"github.com/listenerd/listenerd/internal/testkit"
)

// desiredRig is a daemon's engine (a bus, a listener manager) making one
// host's desired keys true through a fleet.Desired, as the daemon wires
// it: its Target records the drain of each close it carries out.
type desiredRig struct {
	t    *testing.T
	bus  *events.Bus
	mgr  *listener.Manager
	decl *service.Declared
	host string

	stop func() // ends the Desired's Run, and waits for it

	mu     sync.Mutex
	drains map[string]time.Duration // listener id -> the drain its close was given
}

// recordingTarget is the daemon's own target (service.Declared), noting
// each close's drain.
type recordingTarget struct {
	*service.Declared
	r *desiredRig
}

func (t recordingTarget) Close(ctx context.Context, id string, drain time.Duration) error {
	t.r.mu.Lock()
	t.r.drains[id] = drain
	t.r.mu.Unlock()
	return t.Declared.Close(ctx, id, drain)
}

func (r *desiredRig) drain(id string) (time.Duration, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, ok := r.drains[id]
	return d, ok
}

// newDesiredRig starts a Desired for host on NATS at url, stopped at the
// test's end.
func newDesiredRig(t *testing.T, url, host string) *desiredRig {
	t.Helper()
	return newDesiredRigWith(t, url, host, nil)
}

// newDesiredRigWith is newDesiredRig with the Desired set by with before
// it runs; rig.stop stops it before the test's end.
func newDesiredRigWith(t *testing.T, url, host string, with func(d *fleet.Desired)) *desiredRig {
	t.Helper()
	r := &desiredRig{t: t, bus: events.NewBus(events.Options{}), host: host, drains: map[string]time.Duration{}}
	closing := make(chan struct{}, 1)
	r.mgr = listener.NewManager(r.bus, nil, listener.Options{Closed: func(string) {
		select {
		case closing <- struct{}{}:
		default:
		}
	}})
	t.Cleanup(func() { r.mgr.Shutdown(0) })
	r.decl = service.NewDeclared(r.mgr)
	nc, err := fleet.ConnConfig{URL: url, Name: host}.Connect(nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	d := &fleet.Desired{Conn: nc, Host: host, Replicas: 1, Target: recordingTarget{r.decl, r}, List: r.decl.List,
		Bus: r.bus, Closing: closing}
	if with != nil {
		with(d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { d.Run(ctx) })
	r.stop = sync.OnceFunc(func() {
		cancel()
		wg.Wait()
	})
	t.Cleanup(r.stop)
	return r
}

// statusWatch is the test's own watch of the bucket's status keys: every
// value each key takes, in order.
type statusWatch struct {
	t    *testing.T
	kv   jetstream.KeyValue
	w    jetstream.KeyWatcher
	seen map[string][]*fleet.Status // key -> its values; nil: deleted
}

func watchStatus(t *testing.T, url string) *statusWatch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	kv, err := fleet.OpenBucket(ctx, natstest.JetStream(t, url), 1)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.Watch(context.Background(), fleet.HostKeys(fleet.StatusPrefix, "*"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop() })
	return &statusWatch{t: t, kv: kv, w: w, seen: map[string][]*fleet.Status{}}
}

// wait reads the watch until the latest value of host's name's status
// satisfies ok (st nil: no status), and returns it.
func (s *statusWatch) wait(host, name string, ok func(st *fleet.Status) bool) *fleet.Status {
	s.t.Helper()
	key := fleet.StatusKey(host, name)
	timer := time.NewTimer(guard)
	defer timer.Stop()
	for {
		if vs := s.seen[key]; len(vs) > 0 && ok(vs[len(vs)-1]) {
			return vs[len(vs)-1]
		}
		select {
		case e := <-s.w.Updates():
			if e == nil {
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				s.seen[e.Key()] = append(s.seen[e.Key()], nil)
				continue
			}
			var st fleet.Status
			if err := json.Unmarshal(e.Value(), &st); err != nil {
				s.t.Fatalf("%s: %v", e.Key(), err)
			}
			s.seen[e.Key()] = append(s.seen[e.Key()], &st)
		case <-timer.C:
			vs := s.seen[key]
			s.t.Fatalf("%s: no such status after %v; its values: %s", key, guard, statusList(vs))
		}
	}
}

// values returns how many values host's name's status key has taken so
// far, as read.
func (s *statusWatch) values(host, name string) int { return len(s.seen[fleet.StatusKey(host, name)]) }

func statusList(vs []*fleet.Status) string {
	out := ""
	for _, v := range vs {
		out += fmt.Sprintf("%+v; ", v)
	}
	return out
}

func (s *statusWatch) put(host, name, value string) uint64 {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	rev, err := s.kv.Put(ctx, fleet.DesiredKey(host, name), []byte(value))
	if err != nil {
		s.t.Fatal(err)
	}
	return rev
}

func listeningAt(rev uint64) func(*fleet.Status) bool {
	return func(st *fleet.Status) bool { return st != nil && st.State == "listening" && st.Revision >= rev }
}

const echoDesired = `{"spec": {"host": "127.0.0.1", "port": %d, "handler": {"echo": {}}}%s}`

func soloNATS(t *testing.T) string {
	t.Helper()
	s, err := natstest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natstest.Stop(s) })
	return s.ClientURL()
}

// dialOpen connects to addr and waits until the listener counts the
// connection open.
func dialOpen(t *testing.T, r *desiredRig, id, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	testkit.EventuallyWithin(t, guard, func() bool {
		l, err := r.mgr.Get(id)
		return err == nil && l.Info().Active > 0
	}, "the connection open on "+id)
	return c
}

// A status follows its listener between reconciles: a rebind made outside
// the reconcile, a close through the API (draining while a connection
// is open, then missing), each written soon after, at the key's revision
// (no reconcile ran); a storm of connections writes nothing.
func TestStatusFollowsTheListener(t *testing.T) {
	url := soloNATS(t)
	sw := watchStatus(t, url)
	r := newDesiredRig(t, url, "h")
	rev := sw.put("h", "web", fmt.Sprintf(echoDesired, 0, ""))
	st := sw.wait("h", "web", listeningAt(rev))

	// Rebound on another port, not by the reconcile (as through the API).
	spec, err := service.CanonicalSpec(&listenerdv1.ListenerSpec{Host: "127.0.0.1", Handler: &listenerdv1.Handler{
		Kind: &listenerdv1.Handler_Echo{Echo: &listenerdv1.EchoHandler{}}}})
	if err != nil {
		t.Fatal(err)
	}
	newID, err := r.decl.Rebind(context.Background(), st.ID, spec, 0)
	if err != nil {
		t.Fatal(err)
	}
	l, err := r.mgr.Get(newID)
	if err != nil {
		t.Fatal(err)
	}
	rebound := sw.wait("h", "web", func(st *fleet.Status) bool { return st != nil && st.ID == newID })
	if rebound.State != "listening" || rebound.Address != l.Info().Bound || rebound.Address == st.Address || rebound.Revision != rev {
		t.Fatalf("status after the rebind: %+v, want %s listening on %s at revision %d", rebound, newID, l.Info().Bound, rev)
	}

	// A storm of connections: no status written. The close that follows
	// is the next value the key takes.
	before := sw.values("h", "web")
	for range 200 {
		c, err := net.Dial("tcp", rebound.Address)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	testkit.EventuallyWithin(t, guard, func() bool { i := l.Info(); return i.Accepted == 200 && i.Active == 0 },
		"200 connections accepted and closed")

	// Closed through the API, a connection open: draining, then missing.
	c := dialOpen(t, r, newID, rebound.Address)
	if _, err := r.mgr.Close(newID, time.Hour, false); err != nil {
		t.Fatal(err)
	}
	draining := sw.wait("h", "web", func(st *fleet.Status) bool { return st != nil && st.State == "draining" })
	if draining.ID != newID || draining.Revision != rev {
		t.Fatalf("status of the closing listener: %+v", draining)
	}
	if vs := sw.seen[fleet.StatusKey("h", "web")][before:]; len(vs) != 1 {
		t.Fatalf("status values since the storm began: %s; want the close's alone", statusList(vs))
	}
	c.Close()
	missing := sw.wait("h", "web", func(st *fleet.Status) bool { return st != nil && st.State == "missing" })
	if missing.ID != "" || missing.Address != "" || missing.Revision != rev {
		t.Fatalf("status of the closed listener: %+v", missing)
	}

	// The key written again: put back. No status is written for the new
	// revision before it is reconciled.
	rev = sw.put("h", "web", fmt.Sprintf(echoDesired, 0, `, "drainTimeout": "2s"`))
	sw.wait("h", "web", listeningAt(rev))
	for _, v := range sw.seen[fleet.StatusKey("h", "web")] {
		if v != nil && v.Revision >= rev && v.State != "listening" {
			t.Fatalf("status values: %s; one of revision %d before its reconcile", statusList(sw.seen[fleet.StatusKey("h", "web")]), rev)
		}
	}
}

// A deleted key's listener drains for the key's own drain timeout, its
// status saying so, and its status goes once it is closed.
func TestStatusOfADeletedKeyDrainsThenGoes(t *testing.T) {
	url := soloNATS(t)
	sw := watchStatus(t, url)
	r := newDesiredRig(t, url, "h")
	rev := sw.put("h", "web", fmt.Sprintf(echoDesired, 0, `, "drainTimeout": "1h"`))
	st := sw.wait("h", "web", listeningAt(rev))
	c := dialOpen(t, r, st.ID, st.Address)

	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	if err := sw.kv.Delete(ctx, fleet.DesiredKey("h", "web")); err != nil {
		t.Fatal(err)
	}
	draining := sw.wait("h", "web", func(st *fleet.Status) bool { return st != nil && st.State == "draining" })
	if draining.ID != st.ID || draining.Address != st.Address || draining.Revision <= rev {
		t.Fatalf("status of the deleted key's listener: %+v, want %s draining at the deletion's revision", draining, st.ID)
	}
	if d, ok := r.drain(st.ID); !ok || d != time.Hour {
		t.Fatalf("the close's drain: %v (closed: %v), want the key's 1h", d, ok)
	}
	c.Close()
	sw.wait("h", "web", func(st *fleet.Status) bool { return st == nil })
	testkit.EventuallyWithin(t, guard, func() bool { _, err := r.mgr.Get(st.ID); return err != nil }, "web gone")
}

// At start, the host's status keys that name neither a desired key nor a
// listener are deleted; other hosts' are left alone.
func TestStaleStatusKeysCleanedAtStart(t *testing.T) {
	url := soloNATS(t)
	sw := watchStatus(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	stale, _ := json.Marshal(fleet.Status{State: "listening", Address: "127.0.0.1:1", ID: "ln-gone", Revision: 1})
	for _, key := range []string{fleet.StatusKey("h", "ghost"), fleet.StatusKey("other", "ghost"), fleet.StatusKey("h", "web")} {
		if _, err := sw.kv.Put(ctx, key, stale); err != nil {
			t.Fatal(err)
		}
	}
	rev := sw.put("h", "web", fmt.Sprintf(echoDesired, 0, ""))
	newDesiredRig(t, url, "h")
	sw.wait("h", "ghost", func(st *fleet.Status) bool { return st == nil })
	if st := sw.wait("h", "web", listeningAt(rev)); st.ID == "ln-gone" {
		t.Fatalf("web's status: %+v", st)
	}
	if _, err := sw.kv.Get(ctx, fleet.StatusKey("other", "ghost")); err != nil {
		t.Fatalf("another host's status key: %v", err)
	}
}

// While NATS is away nothing is written; once it is back, each status is
// written as it is then: the latest, not each step.
func TestStatusWrittenWhenNATSReturns(t *testing.T) {
	store := t.TempDir()
	front, err := natstest.NewFront()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(front.Close)
	s, err := natstest.Start(store)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			natstest.Stop(s)
		}
	})
	front.Point(s.Addr().String())
	sw := watchStatus(t, s.ClientURL())
	r := newDesiredRig(t, front.URL(), "h")
	rev := sw.put("h", "web", fmt.Sprintf(echoDesired, 0, ""))
	st := sw.wait("h", "web", listeningAt(rev))
	_ = sw.w.Stop()

	natstest.Stop(s)
	stopped = true
	front.Point("")
	// Rebound twice while NATS is away (as the reconcile leaves it: the
	// same spec, port 0).
	spec, err := service.CanonicalSpec(&listenerdv1.ListenerSpec{Host: "127.0.0.1", Handler: &listenerdv1.Handler{
		Kind: &listenerdv1.Handler_Echo{Echo: &listenerdv1.EchoHandler{}}}})
	if err != nil {
		t.Fatal(err)
	}
	between, err := r.decl.Rebind(context.Background(), st.ID, spec, 0)
	if err != nil {
		t.Fatal(err)
	}
	last, err := r.decl.Rebind(context.Background(), between, spec, 0)
	if err != nil {
		t.Fatal(err)
	}

	again, err := natstest.Start(store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natstest.Stop(again) })
	front.Point(again.Addr().String())
	sw2 := watchStatus(t, again.ClientURL())
	got := sw2.wait("h", "web", func(st *fleet.Status) bool { return st != nil && st.ID == last })
	if got.State != "listening" || got.Revision != rev {
		t.Fatalf("status once NATS is back: %+v", got)
	}
	for _, v := range sw2.seen[fleet.StatusKey("h", "web")] {
		if v != nil && v.ID == between {
			t.Fatalf("status values once NATS is back: %s; the listener of between (%s) was written", statusList(sw2.seen[fleet.StatusKey("h", "web")]), between)
		}
	}
}

// A reconnect reads the statuses in the bucket and writes only those that
// differ: with nothing changed while the connection was cut, none.
func TestStatusNotRewrittenOnReconnect(t *testing.T) {
	front, err := natstest.NewFront()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(front.Close)
	s, err := natstest.Start(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natstest.Stop(s) })
	front.Point(s.Addr().String())
	sw := watchStatus(t, s.ClientURL())
	newDesiredRigWith(t, front.URL(), "h", func(d *fleet.Desired) { d.Heartbeat = time.Hour })
	names := []string{"a", "b", "c"}
	revs := map[string]uint64{}
	for _, name := range names {
		rev := sw.put("h", name, fmt.Sprintf(echoDesired, 0, ""))
		sw.wait("h", name, listeningAt(rev))
	}
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	for _, name := range names {
		e, err := sw.kv.Get(ctx, fleet.StatusKey("h", name))
		if err != nil {
			t.Fatal(err)
		}
		revs[name] = e.Revision()
	}
	hostRev := func() uint64 {
		e, err := sw.kv.Get(ctx, fleet.HostKey("h"))
		if err != nil {
			return 0
		}
		return e.Revision()
	}
	before := hostRev()
	if before == 0 {
		t.Fatal("no host key written at the watch's start")
	}

	front.Cut()
	// The host key is written again when the watch starts after the
	// reconnect (the heartbeat is an hour); a key put after that is
	// reconciled after the statuses were looked at again.
	testkit.EventuallyWithin(t, guard, func() bool { return hostRev() > before }, "the watch started again after the reconnect")
	rev := sw.put("h", "z", fmt.Sprintf(echoDesired, 0, ""))
	sw.wait("h", "z", listeningAt(rev))
	for _, name := range names {
		e, err := sw.kv.Get(ctx, fleet.StatusKey("h", name))
		if err != nil {
			t.Fatal(err)
		}
		if e.Revision() != revs[name] {
			t.Fatalf("status of %s rewritten on reconnect (revision %d, then %d): %s", name, revs[name], e.Revision(),
				statusList(sw.seen[fleet.StatusKey("h", name)]))
		}
	}
}
