package fleet_test

import (
	stdcmp "cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/fleet"
	"github.com/listenerd/listenerd/internal/fleet/natstest"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/service"
	"github.com/listenerd/listenerd/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, natstest.Leaks...) }

// guard bounds every wait: a safety net, never a timing.
const guard = 2 * time.Minute

// rig is a daemon's engine (a bus and a listener manager with one
// listener) publishing to NATS.
type rig struct {
	t    *testing.T
	bus  *events.Bus
	mgr  *listener.Manager
	ln   *listener.Listener
	addr string
	nc   *nats.Conn
	pub  *fleet.Publisher
}

func newRig(t *testing.T, url, host string, busOpts events.Options) *rig {
	t.Helper()
	return newRigWith(t, url, host, busOpts, fleet.Options{})
}

func newRigWith(t *testing.T, url, host string, busOpts events.Options, opts fleet.Options) *rig {
	t.Helper()
	r := &rig{t: t, bus: events.NewBus(busOpts)}
	r.mgr = listener.NewManager(r.bus, nil, listener.Options{})
	t.Cleanup(func() { r.mgr.Shutdown(0) })
	ln, err := r.mgr.Create(context.Background(), "", listener.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	r.ln, r.addr = ln, ln.Info().Bound
	r.nc, err = fleet.ConnConfig{URL: url, Name: host}.Connect(nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.nc.Close)
	opts.Host = host
	t.Cleanup(func() {
		if t.Failed() && r.pub != nil {
			t.Logf("publisher: acked %d of %d, stats %+v", r.pub.Acked(), r.bus.Head(), r.pub.Stats())
		}
	})
	opts.Encode = func(dst []byte, e *events.Event) ([]byte, error) {
		return service.AppendEventJSON(dst, e, r.bus.BootID())
	}
	r.pub, err = fleet.Start(r.nc, r.bus, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.pub.Stop(10 * time.Second) })
	return r
}

// connect opens n connections to the listener one after another, each
// closed at once, and waits until the listener has seen all of them end:
// 2n events (opened, closed).
func (r *rig) connect(n int) {
	r.t.Helper()
	before := r.ln.Info().Accepted
	for range n {
		c, err := net.Dial("tcp", r.addr)
		if err != nil {
			r.t.Fatalf("dial %s: %v", r.addr, err)
		}
		c.Close()
	}
	testkit.EventuallyWithin(r.t, guard, func() bool {
		i := r.ln.Info()
		return i.Accepted == before+uint64(n) && i.Active == 0
	}, fmt.Sprintf("%d connections accepted and closed", n))
}

// stored is one event of the stream, or a gap record, with its message's
// subject and id.
type stored struct {
	subject, id string
	first       uint64 // the message's first event's sequence
	seq         uint64 // the event's, from the payload
	streamSeq   uint64 // the message's in the stream
	listener    string
	gap         *fleet.Gap
}

// waitStream waits until the stream holds want events and gap records,
// then reads them all; it fails if the stream holds more.
func waitStream(t *testing.T, url string, want uint64) []stored {
	t.Helper()
	return readStream(t, url, want, true)
}

// readStream is waitStream that reads what is there once the stream holds
// at least want, when exact is false.
func readStream(t *testing.T, url string, want uint64, exact bool) []stored {
	t.Helper()
	js := jsClient(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	var cons jetstream.Consumer
	var err error
	defer func() {
		if t.Failed() && err != nil {
			t.Logf("the last error of the ordered consumer's creation: %v", err)
		}
	}()
	testkit.EventuallyWithin(t, guard, func() bool {
		octx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err = js.Stream(octx, fleet.Stream); err != nil {
			return false
		}
		cons, err = js.OrderedConsumer(octx, fleet.Stream, jetstream.OrderedConsumerConfig{})
		return err == nil
	}, "the stream made")
	var out []stored
	var msgs, last uint64
	// fetch reads the messages there are within a second.
	fetch := func() {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			es := parseStored(t, m)
			if es[0].streamSeq <= last {
				continue // the consumer delivered it again: one message of the stream
			}
			last = es[0].streamSeq
			msgs++
			out = append(out, es...)
		}
	}
	for uint64(len(out)) < want {
		if ctx.Err() != nil {
			ictx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			info, err := js.Stream(ictx, fleet.Stream)
			cancel()
			if err == nil {
				st := info.CachedInfo().State
				t.Logf("the stream: %d messages, sequences %d to %d; read %d messages, the last %d", st.Msgs, st.FirstSeq, st.LastSeq, msgs, last)
			}
			t.Fatalf("read %d of %d events and gap records", len(out), want)
		}
		fetch()
	}
	if exact { // and nothing more: every message the stream holds is read
		for {
			info, err := js.Stream(ctx, fleet.Stream)
			if err != nil {
				t.Fatal(err)
			}
			if info.CachedInfo().State.Msgs <= msgs || ctx.Err() != nil {
				break
			}
			fetch()
		}
		if uint64(len(out)) != want {
			t.Fatalf("the stream holds %d events and gap records in %d messages, want %d", len(out), msgs, want)
		}
	}
	return out
}

// parseStored reads one message: its events, each of them in the order
// of their sequences, with its subject, and with the last one's sequence
// in LastSeqHeader when there are several; or a gap record.
func parseStored(t *testing.T, m jetstream.Msg) []stored {
	t.Helper()
	s := stored{subject: m.Subject(), id: m.Headers().Get(jetstream.MsgIDHeader)}
	md, err := m.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	s.streamSeq = md.Sequence.Stream
	if strings.HasSuffix(s.subject, "."+fleet.GapToken) {
		if s.gap, err = fleet.ParseGap(m.Data()); err != nil {
			t.Fatalf("gap record %s: %v", m.Data(), err)
		}
		return []stored{s}
	}
	var out []stored
	for line := range fleet.Events(m.Data()) {
		var ev struct {
			Sequence   string `json:"sequence"`
			ListenerID string `json:"listenerId"`
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(line, &ev); err != nil {
			t.Fatalf("message %d, payload %q: %v", s.streamSeq, m.Data(), err)
		}
		if err := json.Unmarshal(line, &fields); err != nil {
			t.Fatal(err)
		}
		e := s
		fmt.Sscan(ev.Sequence, &e.seq)
		e.listener = ev.ListenerID
		if len(out) > 0 && e.seq <= out[len(out)-1].seq {
			t.Fatalf("message %d: event %d after %d", s.streamSeq, e.seq, out[len(out)-1].seq)
		}
		// The kind is the subject's last token, and the name of the
		// event's detail in the payload: connection_opened, connectionOpened.
		kind := s.subject[strings.LastIndexByte(s.subject, '.')+1:]
		if fields[camel(kind)] == nil {
			t.Fatalf("message %d on %s holds an event of another kind: %s", s.streamSeq, s.subject, line)
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		t.Fatalf("message %d on %s: no event in %q", s.streamSeq, s.subject, m.Data())
	}
	want := ""
	if len(out) > 1 {
		want = fmt.Sprint(out[len(out)-1].seq)
	}
	if got := m.Headers().Get(fleet.LastSeqHeader); got != want {
		t.Fatalf("message %d of %d events: %s %q, want %q", s.streamSeq, len(out), fleet.LastSeqHeader, got, want)
	}
	for i := range out {
		out[i].first = out[0].seq
	}
	return out
}

// camel is connectionOpened for connection_opened.
func camel(kind string) string {
	var b strings.Builder
	up := false
	for _, c := range kind {
		switch {
		case c == '_':
			up = true
		case up:
			b.WriteString(strings.ToUpper(string(c)))
			up = false
		default:
			b.WriteRune(c)
		}
	}
	return b.String()
}

// checkOnce checks that msgs carry the events 1 to head of boot on host,
// each once, in order on each subject, with their subject and message id,
// gap records standing for the ranges they name; it returns the gap
// records.
func checkOnce(t *testing.T, msgs []stored, host, boot string, head uint64) []*fleet.Gap {
	t.Helper()
	last := map[string]uint64{}
	for _, m := range msgs {
		if m.gap == nil && m.seq <= last[m.subject] {
			t.Fatalf("event %d on %s stored after event %d", m.seq, m.subject, last[m.subject])
		}
		last[m.subject] = m.seq
	}
	return checkSet(t, msgs, host, boot, head)
}

// checkSet is checkOnce without the order: after a failover, publishes
// that were in flight behind a failed one may be stored before it is
// published again.
func checkSet(t *testing.T, msgs []stored, host, boot string, head uint64) []*fleet.Gap {
	t.Helper()
	slices.SortStableFunc(msgs, func(a, b stored) int { return stdcmp.Compare(sortSeq(a), sortSeq(b)) })
	return check(t, msgs, host, boot, head)
}

// sortSeq is where a stored entry goes in sequence order.
func sortSeq(m stored) uint64 {
	if m.gap != nil {
		return m.gap.From
	}
	return m.seq
}

func check(t *testing.T, msgs []stored, host, boot string, head uint64) []*fleet.Gap {
	t.Helper()
	var gaps []*fleet.Gap
	next := uint64(1)
	for i, m := range msgs {
		if m.gap != nil {
			if m.gap.From != next || m.gap.To < m.gap.From || m.gap.BootID != boot || m.gap.Host != host ||
				m.subject != fleet.GapSubject(host) {
				t.Fatalf("message %d: gap record %+v on %s, want one from %d of boot %s on %s", i+1, m.gap, m.subject, next, boot, host)
			}
			gaps = append(gaps, m.gap)
			next = m.gap.To + 1
			continue
		}
		if m.seq != next {
			for j := max(0, i-3); j < min(len(msgs), i+3); j++ {
				t.Logf("message %d: %+v", j+1, msgs[j])
			}
			t.Fatalf("entry %d is event %d, want %d (lost or duplicated)", i+1, m.seq, next)
		}
		if want := fleet.MsgID(boot, m.first); m.id != want {
			t.Fatalf("message %d: id %q, want %q", i+1, m.id, want)
		}
		lid := m.listener
		if lid == "" {
			lid = fleet.NoListener
		}
		if pre := fleet.Prefix + "." + host + "." + lid + "."; !strings.HasPrefix(m.subject, pre) {
			t.Fatalf("message %d: subject %s, want %s<kind>", i+1, m.subject, pre)
		}
		next++
	}
	if next != head+1 {
		t.Fatalf("the stream ends at event %d, the daemon's head is %d", next-1, head)
	}
	return gaps
}

// fronted is a NATS server that stops and starts again on its store,
// behind a front whose address its clients keep.
type fronted struct {
	t     *testing.T
	dir   string
	front *natstest.Front
	s     *server.Server
}

func startFronted(t *testing.T, dir string) *fronted {
	t.Helper()
	front, err := natstest.NewFront()
	if err != nil {
		t.Fatal(err)
	}
	n := &fronted{t: t, dir: dir, front: front}
	t.Cleanup(func() {
		n.stop()
		front.Close()
	})
	n.start()
	return n
}

func (n *fronted) start() {
	n.s = startNATS(n.t, n.dir)
	n.front.Point(n.s.Addr().String())
}

func (n *fronted) stop() {
	n.front.Point("")
	if n.s != nil {
		natstest.Stop(n.s)
		n.s = nil
	}
}

func startNATS(t *testing.T, dir string) *server.Server {
	t.Helper()
	s, err := natstest.Start(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Events from real connections reach the stream once each, in order,
// under their subjects and message ids.
func TestPublishesEveryEventOnce(t *testing.T) {
	s := startNATS(t, t.TempDir())
	defer natstest.Stop(s)
	r := newRig(t, s.ClientURL(), "alpha", events.Options{})
	r.connect(50)
	head := r.bus.Head()
	if head != 101 { // listener started, then opened and closed for each
		t.Fatalf("head %d, want 101", head)
	}
	msgs := waitStream(t, s.ClientURL(), head)
	checkOnce(t, msgs, "alpha", r.bus.BootID(), head)
	if want := fleet.Prefix + ".alpha." + r.ln.ID() + ".listener_started"; msgs[0].subject != want {
		t.Fatalf("first subject %s, want %s", msgs[0].subject, want)
	}
	kinds := map[string]int{}
	for _, m := range msgs[1:] {
		kinds[strings.TrimPrefix(m.subject, fleet.Prefix+".alpha."+r.ln.ID()+".")]++
	}
	if kinds["connection_opened"] != 50 || kinds["connection_closed"] != 50 {
		t.Fatalf("subjects by kind %v, want 50 connection_opened and 50 connection_closed", kinds)
	}
	testkit.EventuallyWithin(t, guard, func() bool { return r.pub.Acked() == head }, "every event acknowledged")
	st := r.pub.Stats()
	if st.Events != head || st.Acked != st.Published || st.Lag != 0 || st.Gaps != 0 {
		t.Fatalf("stats %+v, want %d events, every publish acked, no lag, no gap", st, head)
	}
}

// NATS stops while connections go on, and starts again on its store: the
// events it missed are published, none lost or duplicated.
func TestResumesAfterNATSRestart(t *testing.T) {
	dir := t.TempDir()
	n := startFronted(t, dir)
	r := newRig(t, n.front.URL(), "beta", events.Options{})
	r.connect(20)
	waitStream(t, n.s.ClientURL(), r.bus.Head())

	n.stop()
	r.connect(30)
	n.start()
	r.connect(10)
	head := r.bus.Head()
	if head != 121 {
		t.Fatalf("head %d, want 121", head)
	}
	gaps := checkOnce(t, waitStream(t, n.s.ClientURL(), head), "beta", r.bus.BootID(), head)
	if len(gaps) != 0 {
		t.Fatalf("gap records %+v: the history held every missed event", gaps)
	}
	t.Logf("stats after the restart: %+v", r.pub.Stats())
}

// A reconnect ends the publisher's wait before its retry: with a wait of
// an hour, the events recorded while NATS was away are still published as
// soon as it answers again.
func TestRetriesAtOnceOnReconnect(t *testing.T) {
	dir := t.TempDir()
	n := startFronted(t, dir)
	r := newRigWith(t, n.front.URL(), "kappa", events.Options{}, fleet.Options{RetryWait: time.Hour})
	r.connect(5)
	waitStream(t, n.s.ClientURL(), r.bus.Head())

	n.stop()
	r.connect(10) // the flight fails on the disconnect: the publisher waits its hour
	n.start()
	head := r.bus.Head()
	gaps := checkOnce(t, waitStream(t, n.s.ClientURL(), head), "kappa", r.bus.BootID(), head)
	if len(gaps) != 0 {
		t.Fatalf("gap records %+v: the history held every missed event", gaps)
	}
}

// With a history too small to hold what NATS missed, one gap record names
// the lost events, and the gap counter says 1.
func TestGapRecordWhenHistoryLost(t *testing.T) {
	dir := t.TempDir()
	n := startFronted(t, dir)
	r := newRig(t, n.front.URL(), "gamma", events.Options{History: 16})
	r.connect(5)
	acked := r.bus.Head()
	waitStream(t, n.s.ClientURL(), acked)
	testkit.EventuallyWithin(t, guard, func() bool { return r.pub.Acked() == acked }, "the first events acknowledged")

	n.stop()
	r.connect(40) // 80 events: the history keeps the last 16
	n.start()
	head := r.bus.Head()
	oldest := head - 16 + 1
	// acked events, the gap record, and the 16 held events
	msgs := waitStream(t, n.s.ClientURL(), acked+1+16)
	gaps := checkOnce(t, msgs, "gamma", r.bus.BootID(), head)
	if len(gaps) != 1 || gaps[0].From != acked+1 || gaps[0].To != oldest-1 {
		t.Fatalf("gap records %+v, want one naming %d to %d", gaps, acked+1, oldest-1)
	}
	if st := r.pub.Stats(); st.Gaps != 1 {
		t.Fatalf("stats %+v, want one gap", st)
	}
	t.Logf("gap record: %s", gaps[0].Line())
}

// With NATS down, the listener still accepts every connection: the
// publisher holds nothing up.
func TestNATSDownNeverStallsAccepts(t *testing.T) {
	n := startFronted(t, t.TempDir())
	r := newRig(t, n.front.URL(), "delta", events.Options{History: 64})
	r.connect(2)
	n.stop()
	const conns = 2000 // far more events than the history holds
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < conns; i += 8 {
				c, err := net.Dial("tcp", r.addr)
				if err != nil {
					errs <- err
					return
				}
				c.Close()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("dial with NATS down: %v", err)
	}
	testkit.EventuallyWithin(t, guard, func() bool { return r.ln.Info().Accepted == conns+2 }, "every connection accepted")
	if st := r.pub.Stats(); st.Acked > 5 {
		t.Fatalf("stats %+v: acks with NATS down", st)
	}
}

// A three-node cluster loses a node, the stream's leader, while
// connections go on: the stream (three replicas) has every event once.
func TestClusterNodeLostUnderLoad(t *testing.T) {
	ss, err := natstest.Cluster(t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	up := map[*server.Server]bool{ss[0]: true, ss[1]: true, ss[2]: true}
	defer func() {
		for s := range up {
			natstest.Stop(s)
		}
	}()
	url := natstest.URLs(ss...)
	t.Logf("%v: cluster up", time.Now().Format("15:04:05.000"))
	r := newRigWith(t, url, "epsilon", events.Options{}, fleet.Options{Replicas: 3})
	r.connect(20)
	waitStream(t, url, r.bus.Head())

	// The load: connections one after another until told to stop.
	stopLoad := make(chan struct{})
	loadDone := make(chan int)
	loadStart, loadBase := time.Now(), r.bus.Head()
	var loadEnded atomic.Bool
	go func() {
		n := 0
		defer func() { loadEnded.Store(true); loadDone <- n }()
		for range 30000 { // bounded: the test stops it, or it ends here
			select {
			case <-stopLoad:
				return
			default:
			}
			c, err := net.Dial("tcp", r.addr)
			if err != nil {
				return
			}
			c.Close()
			n++
		}
	}()
	// Let the load reach the stream, then take its leader down.
	base := r.bus.Head()
	testkit.EventuallyWithin(t, guard, func() bool { return r.pub.Acked() > base+200 }, "events of the load acknowledged")
	leader := streamLeader(t, url)
	var victim *server.Server
	for _, s := range ss {
		if s.Name() == leader {
			victim = s
		}
	}
	if victim == nil {
		t.Fatalf("stream leader %q is none of the servers", leader)
	}
	t.Logf("%v: stopping %s, the stream's leader", time.Now().Format("15:04:05.000"), leader)
	natstest.Stop(victim)
	delete(up, victim)
	t.Logf("%v: stopped", time.Now().Format("15:04:05.000"))
	// The load goes on through the election, then stops.
	after := r.bus.Head()
	testkit.EventuallyWithin(t, guard, func() bool { return r.pub.Acked() > after+200 || loadEnded.Load() },
		"events acknowledged after the node went")
	close(stopLoad)
	conns := <-loadDone
	t.Logf("%v: load stopped", time.Now().Format("15:04:05.000"))
	// Each connection of the load makes two events, opened and closed,
	// once the listener has taken it from the accept queue: wait for all
	// of them (no active connection is not enough: a connection closed
	// before its accept is still to come, and Active falls just before
	// the closed event is recorded).
	head := loadBase + 2*uint64(conns)
	testkit.EventuallyWithin(t, guard, func() bool { return r.bus.Head() == head }, "the load's events recorded")
	testkit.EventuallyWithin(t, guard, func() bool { return r.pub.Acked() == head }, "every event acknowledged")
	t.Logf("%.0f events a second published and acknowledged, from the load's start to the last ack",
		float64(head-loadBase)/time.Since(loadStart).Seconds())
	var rest []*server.Server
	for s := range up {
		rest = append(rest, s)
	}
	// JetStream stores a publish once per message id within its duplicate
	// window, across a change of stream leader too (the new leader takes
	// writes once it applied its whole log). What the test can hold the
	// publisher to: nothing lost, and a copy stored twice only of a publish
	// that failed (only those are sent again), so never more copies than
	// failures. Copies are counted and logged with their stream sequences.
	msgs := readStream(t, natstest.URLs(rest...), head, false)
	seen := map[string]stored{}
	var once []stored
	for _, m := range msgs {
		key := fmt.Sprint(m.id, "/", m.seq)
		if first, ok := seen[key]; ok {
			t.Logf("event %d (message id %s) stored twice: stream sequences %d and %d", m.seq, m.id, first.streamSeq, m.streamSeq)
			continue
		}
		seen[key] = m
		once = append(once, m)
	}
	dups := len(msgs) - len(once)
	if gaps := checkSet(t, once, "epsilon", r.bus.BootID(), head); len(gaps) != 0 {
		t.Fatalf("gap records %+v", gaps)
	}
	st := r.pub.Stats()
	if uint64(dups) > st.FailedEvents {
		t.Fatalf("%d duplicates stored, more than the %d events of the publishes that failed", dups, st.FailedEvents)
	}
	if st.Events > head+st.FailedEvents {
		t.Fatalf("stats %+v: %d events published for %d, more than once more per failed one", st, st.Events, head)
	}
	t.Logf("duplicates stored (same message id): %d", dups)
	t.Logf("%d connections, %d events once each in the stream; leader %s went down; stats %+v", conns+20, head, leader, r.pub.Stats())
}

// jsClient connects to url for the test's duration.
func jsClient(t *testing.T, url string) jetstream.JetStream { return natstest.JetStream(t, url) }

// streamLeader names the server leading the stream's replicas.
func streamLeader(t *testing.T, url string) string {
	t.Helper()
	js := jsClient(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	st, err := js.Stream(ctx, fleet.Stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil || info.Cluster == nil {
		t.Fatalf("stream info: %v, %+v", err, info)
	}
	if n := len(info.Cluster.Replicas) + 1; n != 3 {
		t.Fatalf("the stream has %d replicas, want 3", n)
	}
	return info.Cluster.Leader
}

// After an upgrade (the new process's bus goes on with the old one's boot
// id and history), the new publisher goes on after the last event of the
// boot the stream holds: nothing is published twice or skipped.
func TestUpgradeResumesAfterTheStreamsLast(t *testing.T) {
	s := startNATS(t, t.TempDir())
	defer natstest.Stop(s)
	encode := func(bus *events.Bus) func([]byte, *events.Event) ([]byte, error) {
		return func(dst []byte, e *events.Event) ([]byte, error) {
			return service.AppendEventJSON(dst, e, bus.BootID())
		}
	}
	start := func(bus *events.Bus) (*fleet.Publisher, *nats.Conn) {
		nc, err := fleet.ConnConfig{URL: s.ClientURL()}.Connect()
		if err != nil {
			t.Fatal(err)
		}
		pub, err := fleet.Start(nc, bus, fleet.Options{Host: "zeta", Encode: encode(bus)})
		if err != nil {
			t.Fatal(err)
		}
		return pub, nc
	}
	old := events.NewBus(events.Options{})
	pub, nc := start(old)
	for range 10 {
		old.Publish(events.Event{Kind: events.KindLimitsChanged, Listener: "ln-1"})
	}
	testkit.EventuallyWithin(t, guard, func() bool { return pub.Acked() == 10 }, "the old process's events acknowledged")
	pub.Stop(10 * time.Second)
	nc.Close()

	evs, head := old.Snapshot()
	fresh := events.NewBus(events.Options{})
	if err := fresh.Resume(old.BootID(), evs, head); err != nil {
		t.Fatal(err)
	}
	pub, nc = start(fresh)
	defer nc.Close()
	defer pub.Stop(10 * time.Second)
	for range 5 {
		fresh.Publish(events.Event{Kind: events.KindLimitsChanged, Listener: "ln-1"})
	}
	testkit.EventuallyWithin(t, guard, func() bool { return pub.Acked() == 15 }, "the new process's events acknowledged")
	checkOnce(t, waitStream(t, s.ClientURL(), 15), "zeta", old.BootID(), 15)
	if st := pub.Stats(); st.Events != 5 {
		t.Fatalf("the new process published %d events, want its 5 alone", st.Events)
	}
}

// A stream that refuses the publishes (here: every payload is over its
// message size) answers each with an error: none counts as acknowledged,
// they count as failed, and once the stream takes them again the
// publisher resumes and every event lands once. Not in order: publishes
// in flight when the stream changes are stored behind refused ones (CI
// saw events 9-11 stored, then 1-8 published again).
func TestRefusedPublishesResume(t *testing.T) {
	s := startNATS(t, t.TempDir())
	defer natstest.Stop(s)
	js := jsClient(t, s.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	cfg := fleet.Options{}.StreamConfig()
	cfg.MaxMsgSize = 8 // smaller than any event
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	r := newRig(t, s.ClientURL(), "eta", events.Options{})
	r.connect(5)
	testkit.EventuallyWithin(t, guard, func() bool { return r.pub.Stats().Failed >= 3 }, "refused publishes counted")
	if st := r.pub.Stats(); st.Acked != 0 || r.pub.Acked() != 0 {
		t.Fatalf("stats %+v, acked %d: refused publishes counted as acknowledged", st, r.pub.Acked())
	}
	cfg.MaxMsgSize = -1
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	head := r.bus.Head()
	testkit.EventuallyWithin(t, guard, func() bool { return r.pub.Acked() == head }, "every event acknowledged")
	checkSet(t, waitStream(t, s.ClientURL(), head), "eta", r.bus.BootID(), head)
}

// An event JetStream refuses (here: over the stream's message size) fails
// its flight while the later events of the flight are stored and
// acknowledged; the publisher then publishes the refused one again until
// it is stored, but never the acknowledged ones: a copy of them would
// rely on the stream's duplicate window (and be stored twice past it).
func TestNeverRepublishesAcknowledged(t *testing.T) {
	s := startNATS(t, t.TempDir())
	defer natstest.Stop(s)
	url := s.ClientURL()
	js := jsClient(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	cfg := fleet.Options{}.StreamConfig()
	cfg.MaxMsgSize = 32 << 10 // over a full message of small events (about 16 KiB)
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	bus := events.NewBus(events.Options{})
	const before, after = 5, 40
	for range before {
		bus.Publish(events.Event{Kind: events.KindLimitsChanged, Listener: "ln-1"})
	}
	bus.Publish(events.Event{Kind: events.KindListenerReconciled, Listener: "ln-1", Detail: &events.Detail{Name: "web",
		Reconcile: &events.Reconcile{Action: "update", Change: strings.Repeat("x", 40<<10), Source: "test"}}})
	for range after {
		bus.Publish(events.Event{Kind: events.KindLimitsChanged, Listener: "ln-1"})
	}
	head := bus.Head()
	nc, err := fleet.ConnConfig{URL: url}.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	pub, err := fleet.Start(nc, bus, fleet.Options{Host: "eta",
		Encode: func(dst []byte, e *events.Event) ([]byte, error) {
			return service.AppendEventJSON(dst, e, bus.BootID())
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Stop(10 * time.Second)
	testkit.EventuallyWithin(t, guard, func() bool { return pub.Stats().Failed >= 2 }, "the big event refused twice")
	if a := pub.Acked(); a > before {
		t.Fatalf("acknowledged through %d, want %d at most: the refused event holds it", a, before)
	}
	cfg.MaxMsgSize = -1
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	testkit.EventuallyWithin(t, guard, func() bool { return pub.Acked() == head }, "every event acknowledged")
	msgs := waitStream(t, url, head)
	at := slices.IndexFunc(msgs, func(m stored) bool { return m.seq == before+1 }) + 1
	checkSet(t, msgs, "eta", bus.BootID(), head)
	st := pub.Stats()
	t.Logf("stats %+v; the refused event %d stored as message %d", st, before+1, at)
	if st.Events != head+st.FailedEvents || st.FailedEvents != st.Failed {
		t.Fatalf("stats %+v: %d events published for %d and %d failed publishes of %d events, want the refused event alone sent again",
			st, st.Events, head, st.Failed, st.FailedEvents)
	}
}

// A publish stored whose ack was lost is looked up in the stream before it
// is sent again once half the stream's duplicate window has passed: past
// the window JetStream would store the copy. Here the window is 100 ms and
// the front holds what the server sends for far longer. With a message an
// event, 600 publishes are more than one batch of the lookup.
func TestUnansweredLookedUpPastDuplicateWindow(t *testing.T) {
	for _, pack := range []int{1, 0} {
		t.Run(fmt.Sprint("pack=", pack), func(t *testing.T) {
			host := fmt.Sprint("lambda", pack)
			n, r, head := lostAcks(t, host, 100*time.Millisecond, pack)
			checkOnce(t, waitStream(t, n.s.ClientURL(), head), host, r.bus.BootID(), head)
			if st := r.pub.Stats(); st.Events != head {
				t.Fatalf("stats %+v: %d events published for %d, the stored ones sent again", st, st.Events, head)
			}
		})
	}
}

// lostAcks has a publisher publish 5 connections' events, then 300 more
// whose acks the front holds (the server stores them) until the publisher
// counted them failed; then the front lets through again, and it waits
// until everything is acknowledged. window is the stream's duplicate
// window, pack the publisher's Options.Pack.
func lostAcks(t *testing.T, host string, window time.Duration, pack int) (*fronted, *rig, uint64) {
	t.Helper()
	n := startFronted(t, t.TempDir())
	js := jsClient(t, n.s.ClientURL())
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	cfg := fleet.Options{}.StreamConfig()
	cfg.Duplicates = window
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	r := newRigWith(t, n.front.URL(), host, events.Options{},
		fleet.Options{AckTimeout: 2 * time.Second, RetryWait: 50 * time.Millisecond, Pack: pack})
	r.connect(5)
	acked := r.bus.Head()
	testkit.EventuallyWithin(t, guard, func() bool { return r.pub.Acked() == acked }, "the first events acknowledged")

	n.front.Mute()
	r.connect(300)
	head := r.bus.Head()
	waitStream(t, n.s.ClientURL(), head) // stored, their acks held by the front
	testkit.EventuallyWithin(t, guard, func() bool { return r.pub.Stats().FailedEvents >= head-acked },
		"the unanswered publishes counted as failed")
	n.front.Cut()
	testkit.EventuallyWithin(t, guard, func() bool { return r.pub.Acked() == head }, "every event acknowledged")
	return n, r, head
}

// Events of one subject published together share a message, up to
// Options.Pack of them; Pack 1 gives a message an event. Here 300 events
// of one listener and 100 of another are in the history before the
// publisher starts, so its first batch holds all 400.
func TestPacksEventsOfOneSubject(t *testing.T) {
	s := startNATS(t, t.TempDir())
	defer natstest.Stop(s)
	for _, tc := range []struct {
		pack, want int
	}{{0, 5 + 2}, {1, 400}} { // ceil(300/64) + ceil(100/64); one a message
		t.Run(fmt.Sprint("pack=", tc.pack), func(t *testing.T) {
			js := jsClient(t, s.ClientURL())
			ctx, cancel := context.WithTimeout(context.Background(), guard)
			defer cancel()
			if err := js.DeleteStream(ctx, fleet.Stream); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Fatal(err)
			}
			bus := events.NewBus(events.Options{})
			for i := range 400 {
				ln := "ln-1"
				if i%4 == 3 {
					ln = "ln-2"
				}
				bus.Publish(events.Event{Kind: events.KindLimitsChanged, Listener: ln})
			}
			nc, err := fleet.ConnConfig{URL: s.ClientURL()}.Connect()
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			pub, err := fleet.Start(nc, bus, fleet.Options{Host: "iota", Pack: tc.pack,
				Encode: func(dst []byte, e *events.Event) ([]byte, error) {
					return service.AppendEventJSON(dst, e, bus.BootID())
				}})
			if err != nil {
				t.Fatal(err)
			}
			defer pub.Stop(10 * time.Second)
			testkit.EventuallyWithin(t, guard, func() bool { return pub.Acked() == 400 }, "every event acknowledged")
			msgs := waitStream(t, s.ClientURL(), 400)
			checkOnce(t, msgs, "iota", bus.BootID(), 400)
			ids := map[string]int{}
			for _, m := range msgs {
				ids[m.id]++
			}
			most := 0
			for _, n := range ids {
				most = max(most, n)
			}
			st := pub.Stats()
			if len(ids) != tc.want || st.Published != uint64(tc.want) || st.Events != 400 || most > max(tc.pack, fleet.DefaultPack) {
				t.Fatalf("%d messages (stats %+v), at most %d events in one; want %d messages", len(ids), st, most, tc.want)
			}
		})
	}
}

// A publish whose ack was lost is sent again as it was, its events
// together under the same message id, so that JetStream, which stored it,
// drops the copy: here the front holds every ack until it is cut, well
// within the stream's duplicate window.
func TestUnansweredSentAgainAsTheyWere(t *testing.T) {
	n, r, head := lostAcks(t, "mu", fleet.DefaultDuplicates, 0)
	checkOnce(t, waitStream(t, n.s.ClientURL(), head), "mu", r.bus.BootID(), head)
	if st := r.pub.Stats(); st.Events <= head {
		t.Fatalf("stats %+v: nothing sent again", st)
	}
}

// A shutdown with NATS unreachable gives up on the events left at once,
// and says so in the log: how far JetStream acknowledged, and the head.
func TestStopLogsWhatIsLeft(t *testing.T) {
	n := startFronted(t, t.TempDir())
	log := &testkit.Buffer{}
	r := newRigWith(t, n.front.URL(), "nu", events.Options{},
		fleet.Options{Log: slog.New(slog.NewTextHandler(log, nil))})
	r.connect(2)
	acked := r.bus.Head()
	testkit.EventuallyWithin(t, guard, func() bool { return r.pub.Acked() == acked }, "the first events acknowledged")
	n.stop()
	testkit.EventuallyWithin(t, guard, func() bool { return !r.nc.IsConnected() }, "the publisher's connection lost")
	r.connect(3)
	r.pub.Stop(guard)
	want := fmt.Sprintf("events left unpublished at shutdown\" nats_host=nu acked=%d head=%d", acked, r.bus.Head())
	if !strings.Contains(log.String(), want) {
		t.Fatalf("log:\n%s\nwant a line with %s", log, want)
	}
}

// BenchmarkPublishBacklog measures how fast a publisher catches up: a
// history of 100,000 connection events (opened, closed, of one listener)
// published to a fresh stream on a local nats-server, until every one is
// acknowledged, packed (Options.Pack 0) and a message an event (1).
//
//	go test -run X -bench PublishBacklog -benchtime 3x ./internal/fleet/
func BenchmarkPublishBacklog(b *testing.B) {
	for _, pack := range []int{0, 1} {
		b.Run(fmt.Sprint("pack=", pack), func(b *testing.B) {
			var sent, took float64
			for range b.N {
				b.StopTimer()
				s, err := natstest.Start(b.TempDir())
				if err != nil {
					b.Fatal(err)
				}
				bus := backlog(100000)
				nc, err := fleet.ConnConfig{URL: s.ClientURL()}.Connect()
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				start := time.Now()
				pub, err := fleet.Start(nc, bus, fleet.Options{Host: "bench", Pack: pack,
					Encode: func(dst []byte, e *events.Event) ([]byte, error) {
						return service.AppendEventJSON(dst, e, bus.BootID())
					}})
				if err != nil {
					b.Fatal(err)
				}
				testkit.EventuallyWithin(b, guard, func() bool { return pub.Acked() == bus.Head() }, "every event acknowledged")
				sent, took = sent+float64(bus.Head()), took+time.Since(start).Seconds()
				b.StopTimer()
				pub.Stop(10 * time.Second)
				nc.Close()
				bus.Close()
				natstest.Stop(s)
			}
			b.ReportMetric(sent/took, "events/s")
		})
	}
}

// backlog is a bus holding n connection events of one listener.
func backlog(n int) *events.Bus {
	bus := events.NewBus(events.Options{History: 2 * n})
	for i := range n {
		bus.Publish(natstest.ConnEvent(i))
	}
	return bus
}
