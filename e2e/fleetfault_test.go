package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/fleet"
	"github.com/listenerd/listenerd/internal/fleet/natstest"
	"github.com/listenerd/listenerd/internal/testkit"
)

// The faults of the acceptance scenario, with the real daemons of
// TestFleetApplyCluster: a NATS node lost under load, and a daemon killed
// and restarted (with NATS reachable, then not).

// clusterGuard bounds what waits on the cluster (an election, a placement,
// a catch-up): a loaded machine can take long.
const clusterGuard = 2 * time.Minute

// natsCluster is a three-node JetStream cluster with the fleet's bucket
// made (replicated on three), and a client of it for the test.
type natsCluster struct {
	t   *testing.T
	ss  []*server.Server
	up  map[*server.Server]bool
	url string
	js  jetstream.JetStream
	kv  jetstream.KeyValue
}

// startNATSCluster starts the cluster, stopped at cleanup (after the
// daemons, which flush to it). A cluster on a loaded machine may take long
// to elect its JetStream meta leader and place a replicated bucket: it
// waits for both within clusterGuard, so the bucket is there before any
// daemon starts.
func startNATSCluster(t *testing.T) *natsCluster {
	t.Helper()
	ss, err := natstest.Cluster(t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	c := &natsCluster{t: t, ss: ss, up: map[*server.Server]bool{}, url: natstest.URLs(ss...)}
	for _, s := range ss {
		c.up[s] = true
	}
	t.Cleanup(func() { // after the daemons, which flush to it
		for s := range c.up {
			natstest.Stop(s)
		}
	})
	c.connect()
	return c
}

// connect waits for c.ss's JetStream meta leader, connects the test's
// client to c.url and opens (or makes) the bucket, within clusterGuard.
func (c *natsCluster) connect() {
	c.t.Helper()
	testkit.EventuallyWithin(c.t, clusterGuard, func() bool {
		for _, s := range c.ss {
			if s.JetStreamIsLeader() {
				return true
			}
		}
		return false
	}, "a JetStream meta leader")
	c.js = natstest.JetStream(c.t, c.url)
	testkit.EventuallyWithin(c.t, clusterGuard, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var err error
		if c.kv, err = fleet.OpenBucket(ctx, c.js, 3); err != nil {
			c.t.Logf("bucket: %v", err)
		}
		return err == nil
	}, "the bucket "+fleet.Bucket)
}

// waitStream waits until the daemons created the events stream.
func (c *natsCluster) waitStream() jetstream.Stream {
	c.t.Helper()
	var st jetstream.Stream
	testkit.EventuallyWithin(c.t, clusterGuard, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var err error
		st, err = c.js.Stream(ctx, fleet.Stream)
		return err == nil
	}, "the stream "+fleet.Stream)
	return st
}

// stop stops the server named name.
func (c *natsCluster) stop(name string) {
	c.t.Helper()
	for s := range c.up {
		if s.Name() == name {
			natstest.Stop(s)
			delete(c.up, s)
			return
		}
	}
	c.t.Fatalf("no server %q running", name)
}

// streamLeader names the server leading the events stream's replicas.
func (c *natsCluster) streamLeader() string {
	c.t.Helper()
	var leader string
	testkit.EventuallyWithin(c.t, clusterGuard, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, err := c.js.Stream(ctx, fleet.Stream)
		if err != nil {
			return false
		}
		info, err := st.Info(ctx)
		if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
			return false
		}
		if n := len(info.Cluster.Replicas) + 1; n != 3 {
			c.t.Fatalf("the stream has %d replicas, want 3", n)
		}
		leader = info.Cluster.Leader
		return true
	}, "the stream's leader")
	return leader
}

// fleetEvent is one event of the events stream, with the message that
// holds it (a message packs one or more events of its subject), or a gap
// record, one a message.
type fleetEvent struct {
	streamSeq   uint64             // the message's
	subject, id string             // the message's subject and message id
	first       bool               // the first event of its message (or a gap record)
	ev          *listenerdv1.Event // nil for a gap record
	gap         *fleet.Gap         // a gap record's
}

// messages counts the stream messages that held evs.
func messages(evs []fleetEvent) (n int) {
	for _, e := range evs {
		if e.first {
			n++
		}
	}
	return n
}

// readFleet reads every message of the stream whose subject matches
// filter, each once, and returns their events: a message the consumer
// delivers twice (the same stream sequence) counts once, while a message
// stored twice (the same message id at two stream sequences) gives its
// events twice. It checks that it read as many messages as the stream
// says it holds, and that each message is as the publisher writes them:
// its events of one boot in increasing sequence, its id the boot and the
// first event's sequence, and with more than one event the last's
// sequence in the header fleet.LastSeqHeader.
func (c *natsCluster) readFleet(filter string) []fleetEvent {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clusterGuard)
	defer cancel()
	st := c.waitStream()
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		c.t.Fatal(err)
	}
	var want uint64
	for _, n := range info.State.Subjects {
		want += n
	}
	cons, err := c.js.OrderedConsumer(ctx, fleet.Stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		c.t.Fatal(err)
	}
	var out []fleetEvent
	var last, read uint64
	for tries := 0; read < want; tries++ {
		if tries > 10000 || ctx.Err() != nil {
			c.t.Fatalf("read %d of the %d messages on %s", read, want, filter)
		}
		batch, err := cons.Fetch(int(min(1000, want-read)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			c.t.Fatal(err)
		}
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil {
				c.t.Fatal(err)
			}
			if md.Sequence.Stream <= last {
				continue // delivered again
			}
			last = md.Sequence.Stream
			read++
			fe := fleetEvent{streamSeq: last, subject: m.Subject(), id: m.Headers().Get(jetstream.MsgIDHeader), first: true}
			if strings.HasSuffix(fe.subject, "."+fleet.GapToken) {
				if fe.gap, err = fleet.ParseGap(m.Data()); err != nil {
					c.t.Fatalf("gap record %d: %s: %v", last, m.Data(), err)
				}
				out = append(out, fe)
				continue
			}
			var evs []*listenerdv1.Event
			for data := range fleet.Events(m.Data()) {
				ev := &listenerdv1.Event{}
				if err := protojson.Unmarshal(data, ev); err != nil {
					c.t.Fatalf("message %d, event %d: %s: %v", last, len(evs)+1, data, err)
				}
				evs = append(evs, ev)
			}
			checkPacked(c.t, last, m.Headers(), evs)
			for i, ev := range evs {
				fe.ev, fe.first = ev, i == 0
				out = append(out, fe)
			}
		}
	}
	return out
}

// checkPacked fails the test unless the events evs of message streamSeq,
// with its headers hdr, are a message as the publisher writes them.
func checkPacked(t *testing.T, streamSeq uint64, hdr nats.Header, evs []*listenerdv1.Event) {
	t.Helper()
	if len(evs) == 0 {
		t.Fatalf("message %d holds no event", streamSeq)
	}
	first, end := evs[0], evs[len(evs)-1]
	for i, ev := range evs[1:] {
		if ev.GetBootId() != first.GetBootId() || ev.GetSequence() <= evs[i].GetSequence() {
			t.Fatalf("message %d: event %d is boot %s seq %d after boot %s seq %d, want the same boot, a later sequence",
				streamSeq, i+2, ev.GetBootId(), ev.GetSequence(), evs[i].GetBootId(), evs[i].GetSequence())
		}
	}
	if id, want := hdr.Get(jetstream.MsgIDHeader), fleet.MsgID(first.GetBootId(), first.GetSequence()); id != want {
		t.Fatalf("message %d: id %q, want %q (the first of its %d events)", streamSeq, id, want, len(evs))
	}
	want := ""
	if len(evs) > 1 {
		want = strconv.FormatUint(end.GetSequence(), 10)
	}
	if got := hdr.Get(fleet.LastSeqHeader); got != want {
		t.Fatalf("message %d of %d events: %s %q, want %q", streamSeq, len(evs), fleet.LastSeqHeader, got, want)
	}
}

// connTally is what the stream holds of one listener's connections, an
// event stored again (a sequence of the boot already seen, in a message
// stored twice or in two messages) counted apart.
type connTally struct {
	opened, closed map[string]int    // by connection id
	remote         map[string]string // connection id to the client's address
	dups           int               // copies of an event already seen
	events         int               // distinct events of the listener
}

func tallyConns(evs []fleetEvent, listenerID, boot string) connTally {
	t := connTally{opened: map[string]int{}, closed: map[string]int{}, remote: map[string]string{}}
	type key struct {
		boot string
		seq  uint64
	}
	seen := map[key]bool{}
	for _, m := range evs {
		if m.ev == nil || m.ev.GetListenerId() != listenerID || (boot != "" && m.ev.GetBootId() != boot) {
			continue
		}
		k := key{m.ev.GetBootId(), m.ev.GetSequence()}
		if seen[k] {
			t.dups++
			continue
		}
		seen[k] = true
		t.events++
		var id string
		var tuple *listenerdv1.FiveTuple
		if o := m.ev.GetConnectionOpened(); o != nil {
			id, tuple = o.GetConnectionId(), o.GetTuple()
			t.opened[id]++
		} else if c := m.ev.GetConnectionClosed(); c != nil {
			id, tuple = c.GetConnectionId(), c.GetTuple()
			t.closed[id]++
		} else {
			continue
		}
		t.remote[id] = net.JoinHostPort(tuple.GetRemoteAddress(), fmt.Sprint(tuple.GetRemotePort()))
	}
	return t
}

// complete reports whether the stream holds an opened and a closed
// event of every one of the client's connections (counted by the
// client's address: loopback reuses ports).
func (t connTally) complete(clients map[string]int) bool {
	done := map[string]int{}
	for id, addr := range t.remote {
		if t.opened[id] > 0 && t.closed[id] > 0 {
			done[addr]++
		}
	}
	for addr, n := range clients {
		if done[addr] < n {
			return false
		}
	}
	return true
}

// check fails the test unless every connection in the stream has exactly
// one opened and one closed event, and the stream's connections are the
// client's, as many from each address: nothing lost, nothing published
// twice.
func (t connTally) check(tb testing.TB, what string, clients map[string]int) {
	tb.Helper()
	byAddr := map[string]int{}
	for id, addr := range t.remote {
		byAddr[addr]++
		if t.opened[id] != 1 || t.closed[id] != 1 {
			tb.Errorf("%s: connection %s (%s): %d opened and %d closed events, want 1 and 1", what, id, addr,
				t.opened[id], t.closed[id])
		}
	}
	lost, extra, all := 0, 0, 0
	for addr, n := range clients {
		all += n
		lost += max(0, n-byAddr[addr])
	}
	for addr, n := range byAddr {
		extra += max(0, n-clients[addr])
	}
	if lost > 0 || extra > 0 {
		tb.Errorf("%s: of the client's %d connections %d are not in the stream; %d in the stream the client never made",
			what, all, lost, extra)
	}
}

// clientLoad dials addr one connection after another, each closed at once
// after an echo, until stop is closed or n connections are made; it
// records each connection's local address (the daemon's remote one).
type clientLoad struct {
	mu    sync.Mutex
	addrs map[string]int // local address to connections from it
	errs  int
	done  chan struct{}
}

func startConnLoad(addr string, n int, stop <-chan struct{}) *clientLoad {
	l := &clientLoad{addrs: map[string]int{}, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for range n {
			select {
			case <-stop:
				return
			default:
			}
			c, err := net.DialTimeout("tcp", addr, guard)
			if err != nil {
				l.mu.Lock()
				l.errs++
				l.mu.Unlock()
				return
			}
			l.mu.Lock()
			l.addrs[c.LocalAddr().String()]++
			l.mu.Unlock()
			c.Close()
		}
	}()
	return l
}

func (l *clientLoad) made() (addrs map[string]int, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	addrs = make(map[string]int, len(l.addrs))
	for a, k := range l.addrs {
		addrs[a] = k
		n += k
	}
	return addrs, n
}

// apply writes text as a fleet file and runs ctl fleet apply on it, with
// flags (--prune) when given; it returns the plan ctl printed.
func (c *natsCluster) apply(d *daemon, text string, flags ...string) string {
	c.t.Helper()
	file := filepath.Join(c.t.TempDir(), "fleet.yaml")
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return d.mustCtl(append([]string{"fleet", "apply", "--nats", c.url, "-f", file}, flags...)...)
}

// waitListening waits until host's daemon reports its listener name
// listening in the bucket, and returns that status.
func (c *natsCluster) waitListening(host, name string) fleet.Status {
	c.t.Helper()
	var st fleet.Status
	testkit.EventuallyWithin(c.t, clusterGuard, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e, err := c.kv.Get(ctx, fleet.StatusKey(host, name))
		if err != nil {
			return false
		}
		return json.Unmarshal(e.Value(), &st) == nil && st.State == "listening"
	}, host+"'s "+name+" listening")
	return st
}

// msgs returns how many messages the stream holds, or false while it
// cannot say (no leader).
func (c *natsCluster) msgs() (uint64, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.js.Stream(ctx, fleet.Stream)
	if err != nil {
		return 0, false
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, false
	}
	return info.State.Msgs, true
}

// waitMsgs waits until the stream holds at least n messages, or stop
// says to stop waiting.
func (c *natsCluster) waitMsgs(n uint64, what string, stop func() bool) uint64 {
	c.t.Helper()
	var have uint64
	testkit.EventuallyWithin(c.t, clusterGuard, func() bool {
		var ok bool
		have, ok = c.msgs()
		return (ok && have >= n) || stop()
	}, what)
	return have
}

// echoes reports whether addr answers an echo; made, when not nil, gets
// the connection's local address if it connected.
func echoes(addr string, made map[string]int) bool {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	if made != nil {
		made[c.LocalAddr().String()]++
	}
	_ = c.SetDeadline(time.Now().Add(guard))
	if _, err := c.Write([]byte("hi")); err != nil {
		return false
	}
	buf := make([]byte, 2)
	_, err = io.ReadFull(c, buf)
	return err == nil && string(buf) == "hi"
}

// ackedEvents sums the acknowledged sequence of the hosts' daemons
// (their metrics at met): how many of their events (of this boot) are in
// the stream at least.
func ackedEvents(t *testing.T, met map[string]string, hosts []string) uint64 {
	t.Helper()
	var n uint64
	for _, h := range hosts {
		n += uint64(metric(t, met[h], "listenerd_fleet_acked_sequence"))
	}
	return n
}

// waitAcked waits until ackedEvents of hosts is at least n, or stop says
// to stop waiting, and returns it.
func waitAcked(t *testing.T, met map[string]string, hosts []string, n uint64, what string, stop func() bool) uint64 {
	t.Helper()
	var have uint64
	testkit.EventuallyWithin(t, clusterGuard, func() bool {
		have = ackedEvents(t, met, hosts)
		return have >= n || stop()
	}, what)
	return have
}

// metric reads one series of the daemon's metrics.
func metric(t *testing.T, url, name string) float64 {
	t.Helper()
	v, ok := scrapeMetrics(t, url).find(name)
	if !ok {
		t.Fatalf("no series %s at %s", name, url)
	}
	return v
}

// The fault "one NATS node is killed and the load continues":
// three daemons on a three-node cluster, connections on two hosts'
// listeners, and the events stream's leader stopped while they go on
// (so that the stream elects another). Afterwards every connection the
// clients made has exactly one connection_opened and one
// connection_closed event in the stream, counted per connection id.
func TestFleetNodeLostUnderLoad(t *testing.T) {
	ips := loopbacks(t, "127.0.0.2", "127.0.0.3", "127.0.0.4")
	c := startNATSCluster(t)
	hosts := []string{"h2", "h3", "h4"}
	met := map[string]string{}
	var d *daemon
	for _, h := range hosts {
		d = startDaemon(t, "--nats", c.url, "--host-name", h, "--nats-replicas", "3", "--metrics", "127.0.0.1:0")
		met[h] = metricsURL(t, d)
	}
	loaded := hosts[:2]
	c.apply(d, fmt.Sprintf("hosts:\n  h2:\n    listeners:\n      web: {spec: {host: %s, port: 0, handler: {echo: {}}}}\n"+
		"  h3:\n    listeners:\n      web: {spec: {host: %s, port: 0, handler: {echo: {}}}}\n", ips[0], ips[1]))
	web := map[string]fleet.Status{}
	for _, h := range loaded {
		web[h] = c.waitListening(h, "web")
	}
	c.waitStream()
	c.waitMsgs(1, "the stream to answer", func() bool { return false })
	// Progress is counted in events the daemons had acknowledged (each
	// one in the stream), not in messages: a message may hold several.
	base := ackedEvents(t, met, loaded)

	// The load: short connections on both hosts until stopped, bounded.
	const perHost = 6000
	stop := make(chan struct{})
	loads := map[string]*clientLoad{}
	start := time.Now()
	for _, h := range loaded {
		loads[h] = startConnLoad(web[h].Address, perHost, stop)
	}
	loadsDone := func() bool {
		for _, l := range loads {
			select {
			case <-l.done:
			default:
				return false
			}
		}
		return true
	}
	healthy := waitAcked(t, met, loaded, base+1000, "the load's first events in the stream", loadsDone)
	t.Logf("before the fault: %d events acknowledged in %v, %.0f a second", healthy-base, time.Since(start).Round(time.Millisecond),
		float64(healthy-base)/time.Since(start).Seconds())
	leader := c.streamLeader()
	t.Logf("stopping %s, the stream's leader, under load", leader)
	c.stop(leader)
	madeBefore := 0
	for _, l := range loads {
		_, n := l.made()
		madeBefore += n
	}
	after := c.waitMsgs(1, "the stream to answer after the node went", func() bool { return false })
	t.Logf("the stream answers again with %d messages, %v after the load started", after, time.Since(start).Round(time.Millisecond))
	waitAcked(t, met, loaded, ackedEvents(t, met, loaded)+2000, "events stored after the node went", loadsDone)
	close(stop)
	madeAfter := -madeBefore
	for _, l := range loads {
		<-l.done
		_, n := l.made()
		madeAfter += n
		if l.errs > 0 {
			t.Errorf("a dial failed during the load (%d)", l.errs)
		}
	}
	t.Logf("connections made once the node was gone: %d (with %d before)", madeAfter, madeBefore)

	// Every event acknowledged, then the stream read.
	for _, h := range loaded {
		testkit.EventuallyWithin(t, clusterGuard, func() bool {
			return metric(t, met[h], "listenerd_fleet_lag_events") == 0
		}, h+"'s events all acknowledged")
	}
	took := time.Since(start)
	msgs := c.readFleet(fleet.HostSubjects("*"))
	conns := 0
	for _, h := range loaded {
		clients, n := loads[h].made()
		conns += n
		tally := tallyConns(msgs, web[h].ID, "")
		tally.check(t, h, clients)
		// A copy stored twice needs a publish repeated: never more copies
		// than the daemon's repeats (publishes beyond one per message
		// stored). Counted in messages (the first event of each), as the
		// daemon counts its publishes.
		ids, dups := map[string]bool{}, 0
		for _, m := range msgs {
			if m.first && strings.HasPrefix(m.subject, fleet.Prefix+"."+h+".") {
				if ids[m.id] {
					dups++
				}
				ids[m.id] = true
			}
		}
		published, failed := metric(t, met[h], "listenerd_fleet_published_total"), metric(t, met[h], "listenerd_fleet_failed_total")
		repeats := int(published) - len(ids)
		t.Logf("%s: %d connections made, each once in the stream; %d messages stored twice (same message id); %d publishes, %d failed, %d repeated",
			h, n, dups, int(published), int(failed), repeats)
		if dups > repeats {
			t.Errorf("%s: %d copies stored, more than the %d publishes repeated", h, dups, repeats)
		}
		if repeats > int(failed) { // only a failed publish is sent again
			t.Errorf("%s: %d publishes repeated, more than the %d that failed", h, repeats, int(failed))
		}
	}
	t.Logf("%d connections, %d events of the load published and acknowledged in %v: %.0f events a second (the load's own rate bounds it)",
		conns, 2*conns, took.Round(time.Millisecond), float64(2*conns)/took.Seconds())
}

// ownEvents returns host's events of boot, by sequence (each once), and
// how many were stored twice.
func ownEvents(msgs []fleetEvent, host, boot string) (bySeq map[uint64]fleetEvent, dups int) {
	bySeq = map[uint64]fleetEvent{}
	for _, m := range msgs {
		if m.ev == nil || !strings.HasPrefix(m.subject, fleet.Prefix+"."+host+".") || m.ev.GetBootId() != boot {
			continue
		}
		if _, ok := bySeq[m.ev.GetSequence()]; ok {
			dups++
			continue
		}
		bySeq[m.ev.GetSequence()] = m
	}
	return bySeq, dups
}

// bootOf returns the boot id of the daemon's events in msgs other than
// those of the boots in not, failing unless there is one.
func bootOf(t *testing.T, msgs []fleetEvent, host string, not ...string) string {
	t.Helper()
	boots := map[string]bool{}
next:
	for _, m := range msgs {
		if m.ev == nil || !strings.HasPrefix(m.subject, fleet.Prefix+"."+host+".") {
			continue
		}
		for _, b := range not {
			if m.ev.GetBootId() == b {
				continue next
			}
		}
		boots[m.ev.GetBootId()] = true
	}
	if len(boots) != 1 {
		t.Fatalf("%s's events in the stream are of boots %v beside %v, want one", host, boots, not)
	}
	for b := range boots {
		return b
	}
	return ""
}

// The fault "a daemon is killed and restarted": the daemon of h2
// dies by SIGKILL under load and starts again on its state directory,
// first with NATS reachable, then with NATS unreachable from it (the
// front it reaches NATS through refuses). Each time its declared
// listener answers again at its address from the saved state, the events
// it had acknowledged before the kill (the metric
// listenerd_fleet_acked_sequence) are in the stream, and its new events
// come under a new boot id; with NATS unreachable it catches up once NATS
// is back: the listener declared meanwhile comes up, and the events of
// the time without NATS are published.
func TestFleetDaemonKilledAndRestarted(t *testing.T) {
	ips := loopbacks(t, "127.0.0.2")
	c := startNATSCluster(t)
	front, err := natstest.NewFront()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(front.Close)
	nats := c.ss[0].Addr().String()
	front.Point(nats)
	dir := testkit.ShortDir(t)
	args := []string{"--nats", front.URL(), "--host-name", "h2", "--nats-replicas", "3", "--metrics", "127.0.0.1:0"}
	d := startDaemonIn(t, dir, args...)
	webSpec := fmt.Sprintf("      web: {spec: {host: %s, port: 0, handler: {echo: {}}}}\n", ips[0])
	if out := c.apply(d, "hosts:\n  h2:\n    listeners:\n"+webSpec); out != "host h2:\n  create web\n" {
		t.Fatalf("fleet apply printed %q", out)
	}
	web := c.waitListening("h2", "web")
	c.waitStream()

	// SIGKILL under load, once some of the load is acknowledged.
	stop := make(chan struct{})
	load := startConnLoad(web.Address, 3000, stop)
	url := metricsURL(t, d)
	testkit.EventuallyWithin(t, clusterGuard, func() bool {
		return metric(t, url, "listenerd_fleet_acked_sequence") > 200
	}, "some of the load acknowledged")
	acked := uint64(metric(t, url, "listenerd_fleet_acked_sequence")) // the kill comes after: at least this is acknowledged
	d.kill()
	close(stop)
	<-load.done
	msgs := c.readFleet(fleet.HostSubjects("h2"))
	boot1 := bootOf(t, msgs, "h2")
	checkAcked := func(msgs []fleetEvent) {
		t.Helper()
		bySeq, dups := ownEvents(msgs, "h2", boot1)
		for seq := uint64(1); seq <= acked; seq++ {
			if _, ok := bySeq[seq]; !ok {
				t.Fatalf("event %d of the killed daemon's boot is not in the stream, though it was acknowledged (up to %d)", seq, acked)
			}
		}
		t.Logf("the killed boot %s: events 1 to %d acknowledged before the kill all in the stream, %d in all (publishes sent before the kill may still land after it; %d stored twice)",
			boot1, acked, len(bySeq), dups)
	}
	checkAcked(msgs)

	// Restarted with NATS reachable.
	// restart starts the daemon again and waits until web answers: made
	// gets the connections it took.
	restart := func(what string, made map[string]int) {
		t.Helper()
		// Dialed from the start (not once the daemon is healthy): how long
		// web takes to come back.
		t0 := time.Now()
		var took time.Duration
		probing := make(chan struct{})
		go func() {
			defer close(probing)
			for time.Since(t0) < clusterGuard {
				if echoes(web.Address, made) {
					took = time.Since(t0)
					return
				}
				time.Sleep(5 * time.Millisecond) // a poll's pace, not a wait for readiness
			}
		}()
		d = startDaemonIn(t, dir, args...)
		<-probing
		if took == 0 {
			t.Fatalf("web never answered at %s after the restart", web.Address)
		}
		resp, err := d.client.ListListeners(testContext(t), &listenerdv1.ListListenersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, l := range resp.GetListeners() {
			names = append(names, l.GetName())
			if l.GetName() == "web" && (l.GetId() != web.ID || l.GetStatus().GetBoundAddress() != web.Address) {
				t.Errorf("web came back as %s on %s, want %s on %s", l.GetId(), l.GetStatus().GetBoundAddress(), web.ID, web.Address)
			}
		}
		if len(names) != 1 || names[0] != "web" {
			t.Errorf("after the restart the daemon has %v, want web alone", names)
		}
		t.Logf("%s: web answered %v after the daemon was started again", what, took.Round(time.Millisecond))
	}
	made := map[string]int{}
	restart("restart with NATS reachable", made)
	for range 3 {
		cn := dial(t, web.Address)
		made[cn.LocalAddr().String()]++
		cn.Close()
	}
	var boot2 string
	// msgs is read again below: the count to wait for is fixed here. The
	// connections' events take two messages at least (opened and closed
	// are two subjects; a message may pack several events of one).
	before := uint64(messages(msgs))
	testkit.EventuallyWithin(t, clusterGuard, func() bool {
		if n, ok := c.msgs(); !ok || n < before+2 {
			return false // not yet: read the stream once it may be there
		}
		msgs = c.readFleet(fleet.HostSubjects("h2"))
		for _, m := range msgs {
			if m.ev != nil && m.ev.GetBootId() != boot1 {
				boot2 = m.ev.GetBootId()
			}
		}
		return boot2 != "" && tallyConns(msgs, web.ID, boot2).complete(made)
	}, "the restarted daemon's connections in the stream")
	boot2 = bootOf(t, msgs, "h2", boot1)
	tallyConns(msgs, web.ID, boot2).check(t, "after the restart", made) // readFleet checked each message's id
	checkAcked(msgs)

	// Killed again, and started while NATS is unreachable from it; the
	// fleet declares a second listener on h2 meanwhile.
	d.kill()
	front.Point("")
	apiSpec := fmt.Sprintf("      api: {spec: {host: %s, port: 0, handler: {echo: {}}}}\n", ips[0])
	if out := c.apply(d, "hosts:\n  h2:\n    listeners:\n"+webSpec+apiSpec); out != "host h2:\n  create api\n  unchanged web\n" {
		t.Fatalf("fleet apply printed %q", out)
	}
	made = map[string]int{}
	restart("restart with NATS unreachable", made)
	for range 3 { // recorded while NATS is away
		cn := dial(t, web.Address)
		made[cn.LocalAddr().String()]++
		cn.Close()
	}
	url = metricsURL(t, d)
	if v := metric(t, url, "listenerd_fleet_acked_sequence"); v != 0 {
		t.Fatalf("acknowledged sequence %v with NATS unreachable", v)
	}
	t0 := time.Now()
	front.Point(nats)
	api := c.waitListening("h2", "api")
	t.Logf("NATS reachable again: api (declared while it was not) listening %v later", time.Since(t0).Round(time.Millisecond))
	if !echoes(api.Address, nil) {
		t.Fatalf("api does not answer at %s", api.Address)
	}
	var boot3 string
	before = uint64(messages(msgs))
	testkit.EventuallyWithin(t, clusterGuard, func() bool {
		if n, ok := c.msgs(); !ok || n < before+2 {
			return false
		}
		msgs = c.readFleet(fleet.HostSubjects("h2"))
		for _, m := range msgs {
			if m.ev != nil && m.ev.GetBootId() != boot1 && m.ev.GetBootId() != boot2 {
				boot3 = m.ev.GetBootId()
			}
		}
		return boot3 != "" && tallyConns(msgs, web.ID, boot3).complete(made)
	}, "the connections made while NATS was unreachable in the stream")
	t.Logf("the events of the time without NATS published %v after it came back", time.Since(t0).Round(time.Millisecond))
	tallyConns(msgs, web.ID, boot3).check(t, "while NATS was unreachable", made)
	for _, m := range msgs {
		if m.ev == nil {
			t.Errorf("gap record %s: the history held every event", m.id)
		}
	}
	checkAcked(msgs)
}
