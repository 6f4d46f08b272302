package e2e

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/fleet"
	"github.com/listenerd/listenerd/internal/fleet/natstest"
	"github.com/listenerd/listenerd/internal/testkit"
)

// stopAll stops every server of the cluster and returns them, for
// restart.
func (c *natsCluster) stopAll() []*server.Server {
	c.t.Helper()
	old := c.ss
	for _, s := range old {
		c.stop(s.Name())
	}
	return old
}

// restart starts the stopped servers old again on their stores (same
// names, store directories and cluster ports; new client ports), and
// connects the test's client to them.
func (c *natsCluster) restart(old []*server.Server) {
	c.t.Helper()
	ss, err := natstest.Restart(old...)
	if err != nil {
		c.t.Fatal(err)
	}
	c.ss, c.url = ss, natstest.URLs(ss...)
	for _, s := range ss {
		c.up[s] = true
	}
	c.connect()
}

// waitLoad waits for the load to end (it is bounded by its count) and
// fails unless every dial went through.
func waitLoad(t *testing.T, what string, l *clientLoad) map[string]int {
	t.Helper()
	select {
	case <-l.done:
	case <-time.After(clusterGuard):
		t.Fatalf("%s: the load did not end within %v", what, clusterGuard)
	}
	if l.errs > 0 {
		t.Fatalf("%s: %d dials failed", what, l.errs)
	}
	clients, _ := l.made()
	return clients
}

func addClients(to, from map[string]int) {
	for a, n := range from {
		to[a] += n
	}
}

func sum(m map[string]int) (n int) {
	for _, k := range m {
		n += k
	}
	return n
}

// The fault "NATS is stopped entirely for a while and restarted":
// three daemons (h2, h3, h4 on 127.0.0.2, .3, .4) reach a three-node
// cluster through fronts, one per node. ctl fleet apply puts listeners on
// the three hosts and connections flow; then every NATS server stops,
// under load on h2 and h3 (publishes in flight). The daemons go on
// accepting, their events held in their histories; h4's history is
// small, and the connections it takes meanwhile overflow it. The cluster
// starts again on its stores, on new client ports the daemons do not
// know, and while they cannot reach it the fleet is changed through the
// bucket (a listener added on h2, h3's limit changed, one of h4's
// removed). Then the fronts point at the restarted servers: each daemon
// reconciles the changes, h2's and h3's every connection is in the stream
// exactly once (those in flight at the stop too), and h4 publishes
// exactly one gap record, naming the sequences its history lost, and
// every other event of its once.
func TestFleetNATSStoppedEntirely(t *testing.T) {
	ips := loopbacks(t, "127.0.0.2", "127.0.0.3", "127.0.0.4")
	c := startNATSCluster(t)
	fronts := make([]*natstest.Front, len(c.ss))
	var urls []string
	for i := range c.ss {
		f, err := natstest.NewFront()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(f.Close) // after the daemons, which flush through it
		fronts[i] = f
		urls = append(urls, f.URL())
	}
	point := func() {
		for i, f := range fronts {
			f.Point(c.ss[i].Addr().String())
		}
	}
	point()

	// h4's history holds 1,000 events: its watchers are cut past 500
	// behind, more than h4 records while NATS is up (no gap then), and
	// less than its outage's 3,000.
	const (
		smallHistory = 1000
		quietConns   = 100  // h4's connections while NATS is up: 200 events, never more than a watcher's lag
		loadConns    = 500  // h2's and h3's while NATS is up, before the outage
		busyConns    = 3000 // h2's and h3's as NATS stops, and while it is down
		outageConns  = 1500 // h4's while NATS is down
	)
	hosts := []string{"h2", "h3", "h4"}
	ds, met := map[string]*daemon{}, map[string]string{}
	for _, h := range hosts {
		args := []string{"--nats", strings.Join(urls, ","), "--host-name", h, "--nats-replicas", "3", "--metrics", "127.0.0.1:0"}
		if h == "h4" {
			args = append(args, "--history", strconv.Itoa(smallHistory))
		}
		ds[h] = startDaemon(t, args...)
		met[h] = metricsURL(t, ds[h])
	}
	d := ds["h2"] // ctl's
	spec := func(ip, extra string) string {
		return fmt.Sprintf("{spec: {host: %s, port: 0, handler: {echo: {}}%s}}", ip, extra)
	}
	before := fmt.Sprintf("hosts:\n"+
		"  h2:\n    listeners:\n      web: %s\n"+
		"  h3:\n    listeners:\n      web: %s\n"+
		"  h4:\n    listeners:\n      web: %s\n      old: {spec: {host: %s, port: 0, handler: {echo: {}}}, drainTimeout: 1s}\n",
		spec(ips[0], ""), spec(ips[1], ", limits: {maxConnections: 5000}"), spec(ips[2], ""), ips[2])
	if out := c.apply(d, before); out != "host h2:\n  create web\nhost h3:\n  create web\nhost h4:\n  create old\n  create web\n" {
		t.Fatalf("fleet apply printed %q", out)
	}
	web := map[string]fleet.Status{}
	for _, h := range hosts {
		web[h] = c.waitListening(h, "web")
	}
	c.waitListening("h4", "old")
	c.waitStream()

	// Connections flow, and are all acknowledged.
	clients := map[string]map[string]int{}
	for _, h := range hosts {
		n := loadConns
		if h == "h4" {
			n = quietConns
		}
		clients[h] = waitLoad(t, h+" before the outage", startConnLoad(web[h].Address, n, nil))
	}
	for _, h := range hosts {
		testkit.EventuallyWithin(t, clusterGuard, func() bool {
			return metric(t, met[h], "listenerd_fleet_lag_events") == 0
		}, h+"'s events all acknowledged before the outage")
	}
	stored, ok := c.msgs()
	if !ok {
		t.Fatal("the stream does not answer")
	}
	acked := map[string]float64{}
	for _, h := range hosts {
		acked[h] = metric(t, met[h], "listenerd_fleet_acked_sequence")
	}

	// Every NATS server stops while h2 and h3 take connections, their
	// publishes in flight; then h4 takes its own. The daemons go on
	// accepting.
	busy := []string{"h2", "h3"}
	busyAcked := ackedEvents(t, met, busy) // all they recorded: counted in events, as a message may hold several
	loads := map[string]*clientLoad{}
	for _, h := range busy {
		loads[h] = startConnLoad(web[h].Address, busyConns, nil)
	}
	busyDone := func() bool {
		for _, h := range busy {
			select {
			case <-loads[h].done:
			default:
				return false
			}
		}
		return true
	}
	waitAcked(t, met, busy, busyAcked+500, "the load's first events in the stream", busyDone)
	const failedLog = "fleet: publishing to NATS failed"
	failedLogs := map[string]int{}
	for _, h := range busy {
		failedLogs[h] = strings.Count(ds[h].stderr.String(), failedLog)
	}
	down := time.Now()
	old := c.stopAll()
	for _, f := range fronts {
		f.Point("")
	}
	for _, h := range busy {
		_, n := loads[h].made()
		t.Logf("NATS stopped with %s's load at %d of %d connections", h, n, busyConns)
	}
	loads["h4"] = startConnLoad(web["h4"].Address, outageConns, nil)
	for _, h := range hosts {
		addClients(clients[h], waitLoad(t, h+" while NATS is down", loads[h]))
		if !echoes(web[h].Address, clients[h]) {
			t.Fatalf("%s's web does not echo while NATS is down", h)
		}
	}
	t.Logf("NATS down: the loads (%d connections on h2 and h3, %d on h4) ended %v after it stopped, every connection accepted",
		busyConns, outageConns, time.Since(down).Round(time.Millisecond))
	// What the daemons had acknowledged when NATS stopped, read once
	// their last answers are in (h2's and h3's flights ended, as their
	// logs say; h4 had none awaited): it must not move until NATS is back.
	for _, h := range busy {
		testkit.EventuallyWithin(t, clusterGuard, func() bool {
			return strings.Count(ds[h].stderr.String(), failedLog) > failedLogs[h]
		}, h+"'s publisher failing")
	}
	downAcked := map[string]float64{}
	for _, h := range hosts {
		downAcked[h] = metric(t, met[h], "listenerd_fleet_acked_sequence")
	}
	if downAcked["h4"] != acked["h4"] {
		t.Errorf("h4: acknowledged sequence %v with NATS down, was %v", downAcked["h4"], acked["h4"])
	}

	// The cluster starts again on its stores; the daemons cannot reach it
	// (the fronts point nowhere, the servers' old client ports are gone),
	// and the fleet changes meanwhile, through the bucket.
	c.restart(old)
	t.Logf("the cluster restarted on its stores %v after it stopped", time.Since(down).Round(time.Millisecond))
	n := c.waitMsgs(stored, "the stream's messages back from the stores", func() bool { return false })
	t.Logf("the restarted stream holds %d messages: %d stored before the outage's load, %d of it", n, stored, n-stored)
	after := fmt.Sprintf("hosts:\n"+
		"  h2:\n    listeners:\n      web: %s\n      api: %s\n"+
		"  h3:\n    listeners:\n      web: %s\n"+
		"  h4:\n    listeners:\n      web: %s\n",
		spec(ips[0], ""), spec(ips[0], ""), spec(ips[1], ", limits: {maxConnections: 4000}"), spec(ips[2], ""))
	plan := regexp.MustCompile(`\(not in [^)]*\)`).ReplaceAllString(c.apply(d, after, "--prune"), "(not in FILE)")
	if plan != "host h2:\n  create api\n  unchanged web\nhost h3:\n  update web: max_connections 5000 -> 4000\n"+
		"host h4:\n  delete old (not in FILE)\n  unchanged web\n" {
		t.Fatalf("fleet apply printed %q", plan)
	}
	changed := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), clusterGuard)
	defer cancel()
	if _, err := c.kv.Get(ctx, fleet.StatusKey("h2", "api")); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("h2's api has a status (%v) before its daemon can reach NATS", err)
	}
	for _, h := range hosts {
		if v, lag := metric(t, met[h], "listenerd_fleet_acked_sequence"), metric(t, met[h], "listenerd_fleet_lag_events"); v != downAcked[h] || lag == 0 {
			t.Fatalf("%s: acknowledged sequence %v (%v when NATS stopped), %v events not acknowledged, before its daemon can reach NATS",
				h, v, downAcked[h], lag)
		}
	}

	// The fronts point at the restarted servers.
	back := time.Now()
	point()
	t.Logf("NATS reachable again %v after it stopped (the changes written %v before)", back.Sub(down).Round(time.Millisecond),
		back.Sub(changed).Round(time.Millisecond))
	list := func(h string) map[string]*listenerdv1.Listener {
		resp, err := ds[h].client.ListListeners(testContext(t), &listenerdv1.ListListenersRequest{})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]*listenerdv1.Listener{}
		for _, l := range resp.GetListeners() {
			switch l.GetStatus().GetState() {
			case listenerdv1.State_STATE_LISTENING, listenerdv1.State_STATE_DRAINING:
				out[l.GetName()] = l
			}
		}
		return out
	}
	api := c.waitListening("h2", "api")
	testkit.EventuallyWithin(t, clusterGuard, func() bool {
		l := list("h3")["web"]
		return l != nil && l.GetSpec().GetLimits().GetMaxConnections() == 4000
	}, "h3's web at its new limit")
	testkit.EventuallyWithin(t, clusterGuard, func() bool {
		_, err := c.kv.Get(ctx, fleet.StatusKey("h4", "old"))
		return list("h4")["old"] == nil && errors.Is(err, jetstream.ErrKeyNotFound)
	}, "h4's old closed, its status gone")
	t.Logf("the changes made while NATS was away reconciled %v after it was reachable", time.Since(back).Round(time.Millisecond))
	if l := list("h3")["web"]; l.GetId() != web["h3"].ID || l.GetStatus().GetBoundAddress() != web["h3"].Address {
		t.Errorf("h3's web changed from %s on %s to %s on %s: a limit changes in place", web["h3"].ID, web["h3"].Address,
			l.GetId(), l.GetStatus().GetBoundAddress())
	}
	if !echoes(api.Address, nil) {
		t.Errorf("h2's api does not echo at %s", api.Address)
	}

	caught := map[string]time.Duration{}
	testkit.EventuallyWithin(t, clusterGuard, func() bool {
		for _, h := range hosts {
			if _, ok := caught[h]; !ok && metric(t, met[h], "listenerd_fleet_lag_events") == 0 {
				caught[h] = time.Since(back)
			}
		}
		return len(caught) == len(hosts)
	}, "every daemon's events acknowledged after the outage")
	for _, h := range hosts {
		t.Logf("%s: caught up %v after NATS was reachable: events %v to %v acknowledged since",
			h, caught[h].Round(time.Millisecond), downAcked[h]+1, metric(t, met[h], "listenerd_fleet_acked_sequence"))
	}
	// Connections flow again, live.
	for _, h := range hosts {
		addClients(clients[h], waitLoad(t, h+" after the outage", startConnLoad(web[h].Address, quietConns, nil)))
	}
	for _, h := range hosts {
		testkit.EventuallyWithin(t, clusterGuard, func() bool {
			return metric(t, met[h], "listenerd_fleet_lag_events") == 0
		}, h+"'s events all acknowledged at the end")
	}
	ls := d.mustCtl("fleet", "ls", "--nats", c.url)
	for _, row := range [][]string{{"h2", "web", "listening", web["h2"].Address, "-"}, {"h2", "api", "listening", api.Address, "-"},
		{"h3", "web", "listening", web["h3"].Address, "-"}, {"h4", "web", "listening", web["h4"].Address, "-"}} {
		if !containsRow(ls, row...) {
			t.Errorf("fleet ls: %q, without the row %q", ls, row)
		}
	}
	if strings.Contains(ls, "old") {
		t.Errorf("fleet ls: %q lists h4's old, removed", ls)
	}

	// The stream: h2's and h3's connections each once, h4's each once
	// but for the events its one gap record names.
	msgs := c.readFleet(fleet.HostSubjects("*"))
	for _, h := range hosts {
		gaps := 0
		for _, m := range msgs {
			if m.gap != nil && m.gap.Host == h {
				gaps++
			}
		}
		want := 0
		if h == "h4" {
			want = 1
		}
		if gaps != want || metric(t, met[h], "listenerd_fleet_gaps_total") != float64(want) {
			t.Errorf("%s: %d gap records in the stream, %v counted, want %d", h, gaps, metric(t, met[h], "listenerd_fleet_gaps_total"), want)
		}
		bySeq, dups := ownEvents(msgs, h, bootOf(t, msgs, h))
		if dups > 0 {
			t.Errorf("%s: %d events stored twice", h, dups)
		}
		tally := tallyConns(msgs, web[h].ID, "")
		t.Logf("%s: %d connections made, %d events in the stream; published %v (%v failed) in all",
			h, sum(clients[h]), len(bySeq), metric(t, met[h], "listenerd_fleet_published_total"),
			metric(t, met[h], "listenerd_fleet_failed_total"))
		if h != "h4" {
			tally.check(t, h, clients[h])
			continue
		}
		checkGap(t, msgs, bySeq, tally, clients[h], uint64(acked[h]), uint64(metric(t, met[h], "listenerd_fleet_acked_sequence")))
	}
}

// checkGap checks h4's events: one gap record, past what was acknowledged
// before the outage (acked); every sequence up to last either in the
// stream once or in the gap, never both; every connection of the stream
// one of the client's, at most one opened and one closed event each;
// and the client's connections missing from the stream no more than the
// gap's events account for.
func checkGap(t *testing.T, msgs []fleetEvent, bySeq map[uint64]fleetEvent, tally connTally, clients map[string]int, acked, last uint64) {
	t.Helper()
	var g *fleet.Gap
	for _, m := range msgs {
		if m.gap != nil && m.gap.Host == "h4" {
			g = m.gap
		}
	}
	if g == nil {
		t.Error("h4: no gap record")
		return
	}
	t.Logf("h4's gap record: sequences %d to %d lost (%d events), of the %d recorded since the last acknowledged before the outage (%d)",
		g.From, g.To, g.To-g.From+1, last-acked, acked)
	if g.From != acked+1 || g.To < g.From || g.To >= last {
		t.Errorf("h4's gap %d-%d: want it from %d, the first event not acknowledged, to before %d, the last", g.From, g.To, acked+1, last)
	}
	for seq := uint64(1); seq <= last; seq++ {
		_, in := bySeq[seq]
		if lost := seq >= g.From && seq <= g.To; in == lost {
			t.Errorf("h4's event %d: in the stream %v, in the gap %v: want one of them", seq, in, lost)
			return
		}
	}
	byAddr := map[string]int{}
	streamed := 0
	for id, addr := range tally.remote {
		byAddr[addr]++
		streamed += tally.opened[id] + tally.closed[id]
		if tally.opened[id] > 1 || tally.closed[id] > 1 {
			t.Errorf("h4: connection %s (%s): %d opened and %d closed events", id, addr, tally.opened[id], tally.closed[id])
		}
	}
	for addr, n := range byAddr {
		if n > clients[addr] {
			t.Errorf("h4: %d connections from %s in the stream, the client made %d", n, addr, clients[addr])
		}
	}
	missing := 2*sum(clients) - streamed
	if missing <= 0 || uint64(missing) > g.To-g.From+1 {
		t.Errorf("h4: %d of the client's %d connections' events not in the stream, want some, at most the gap's %d",
			missing, 2*sum(clients), g.To-g.From+1)
	}
}
