package listenerd_test

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/listenerd/listenerd/api/listenerd"
	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// A fault probe of the streams the Go package reuses (WithReadyStreams):
// peers on 127.0.0.1 echo through handlers that are killed (their client
// connection closed, as a process that dies) or detach, and are replaced,
// while the load runs. Each connection carries bytes of its own, so a
// byte that reached the wrong socket or the wrong handler is seen. At the
// end every peer got its whole echo, or its connection's closed event
// says why not; every connection opened was closed; no connection is
// left, and the handler that stayed attached throughout still takes as
// many connections at once as it asked for (its load did not drift).
// TestMain checks for leaked goroutines and descriptors.

// The probe's header, first on every connection both ways: mode, length
// of the payload that follows, the connection's number.
const probeHeader = 1 + 4 + 8

// Peer modes.
const (
	modeEcho    = 'E' // write, half-close, read the echo to its end
	modeHandler = 'H' // the handler half-closes first, then reads the peer's tail
	modeReset   = 'R' // the peer resets at some point
	modeSlow    = 'S' // a large echo read slowly
	modeHold    = 'W' // held open until the peer ends it (the load check)
)

func probeHead(mode byte, n int, id uint64) []byte {
	h := make([]byte, probeHeader)
	h[0] = mode
	binary.BigEndian.PutUint32(h[1:5], uint32(n))
	binary.BigEndian.PutUint64(h[5:], id)
	return h
}

// probeBytes are connection id's n bytes (with tail, its tail's): no two
// connections share them.
func probeBytes(id uint64, n int, tail bool) []byte {
	var seed [32]byte
	binary.BigEndian.PutUint64(seed[:], id)
	if tail {
		seed[8] = 1
	}
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(seed).Read(b)
	return b
}

// probeHandler serves a connection as the probe's peers expect, and
// reports bytes that are not the connection's own.
func probeHandler(c net.Conn, held *atomic.Int32, bad func(string)) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(testkit.Guard))
	head := make([]byte, probeHeader)
	if _, err := io.ReadFull(c, head); err != nil {
		return
	}
	mode, n, id := head[0], int(binary.BigEndian.Uint32(head[1:5])), binary.BigEndian.Uint64(head[5:])
	if _, err := c.Write(head); err != nil {
		return
	}
	want := probeBytes(id, n, false)
	switch mode {
	case modeHandler:
		got := make([]byte, n)
		k, err := io.ReadFull(c, got)
		if !bytes.Equal(got[:k], want[:k]) {
			bad(fmt.Sprintf("connection %d: the handler read bytes not its own", id))
		}
		if err != nil {
			return
		}
		if _, err := c.Write(got); err != nil {
			return
		}
		_ = c.(halfCloser).CloseWrite()
		rest, _ := io.ReadAll(c)
		if tail := probeBytes(id, 64, true); !bytes.HasPrefix(tail, rest) {
			bad(fmt.Sprintf("connection %d: the handler read a tail not its own", id))
		}
	case modeHold:
		held.Add(1)
		_, _ = io.Copy(io.Discard, c)
		held.Add(-1)
	default:
		buf := make([]byte, 16<<10)
		off := 0
		for {
			k, err := c.Read(buf)
			if off+k > len(want) || !bytes.Equal(buf[:k], want[off:off+k]) {
				bad(fmt.Sprintf("connection %d: the handler read bytes not its own at %d", id, off))
				return
			}
			off += k
			if k > 0 {
				if _, werr := c.Write(buf[:k]); werr != nil {
					return
				}
			}
			if err != nil {
				break
			}
		}
		_ = c.(halfCloser).CloseWrite()
	}
}

// probeHandlerProc is one handler "process": a client connection of its
// own, attached to the listener.
type probeHandlerProc struct {
	c    *listenerd.Client
	l    *listenerd.Listener
	wg   sync.WaitGroup // its accept loop and connections
	held atomic.Int32   // modeHold connections open now
}

func attachProbe(t *testing.T, lid string, conc int, bad func(string)) *probeHandlerProc {
	t.Helper()
	c, err := listenerd.Dial(listenerd.Options{NoHandover: true})
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.Attach(context.Background(), lid, listenerd.WithConcurrency(conc), listenerd.WithReadyStreams(conc/2), listenerd.WithLabel("probe"))
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	h := &probeHandlerProc{c: c, l: l}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			a, err := l.Accept()
			if err != nil {
				return
			}
			h.wg.Add(1)
			go func() {
				defer h.wg.Done()
				probeHandler(a, &h.held, bad)
			}()
		}
	}()
	return h
}

// kill ends the handler as a process that dies: its client connection
// closes under its streams.
func (h *probeHandlerProc) kill() {
	h.c.Close()
	h.l.Close()
	h.wg.Wait()
}

// detach ends the handler politely: it stops accepting, serves what it
// accepted to the end, then closes its client connection.
func (h *probeHandlerProc) detach() {
	h.l.Close()
	h.wg.Wait()
	h.c.Close()
}

// peerOutcome is what one peer saw.
type peerOutcome struct {
	id     uint64
	mode   byte
	port   uint32
	dialed int64 // its dial's place among the dials that returned a connection
	ok     bool  // the whole echo, as asked
	err    error // why not
	alien  bool  // it read a byte that was not its own
}

// probePeer runs connection id in mode against addr; dials counts the
// dials that returned a connection.
func probePeer(addr string, id uint64, mode byte, rng *rand.Rand, dials *atomic.Int64) peerOutcome {
	out := peerOutcome{id: id, mode: mode}
	d := net.Dialer{Timeout: testkit.Guard}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		out.err = err
		return out
	}
	out.dialed = dials.Add(1)
	c := nc.(*net.TCPConn)
	defer c.Close()
	out.port = uint32(c.LocalAddr().(*net.TCPAddr).Port)
	_ = c.SetDeadline(time.Now().Add(testkit.Guard))
	var n int
	switch mode {
	case modeEcho:
		n = rng.IntN(32 << 10)
	case modeHandler:
		n = rng.IntN(16 << 10)
	case modeReset:
		n = rng.IntN(64 << 10)
	case modeSlow:
		n = 256<<10 + rng.IntN(256<<10)
	}
	body := probeBytes(id, n, false)
	want := append(probeHead(mode, n, id), body...)
	// check reads everything that comes (up to limit bytes) and says
	// whether it is a prefix of want.
	read := func(limit int, slow bool) ([]byte, error) {
		var got []byte
		buf := make([]byte, 32<<10)
		if slow {
			buf = buf[:2<<10]
		}
		for len(got) < limit {
			k, err := c.Read(buf[:min(len(buf), limit-len(got))])
			if len(got)+k > len(want) || !bytes.Equal(buf[:k], want[len(got):len(got)+k]) {
				out.alien = true
				return got, errors.New("read bytes not its own")
			}
			got = append(got, buf[:k]...)
			if err != nil {
				return got, err
			}
			if slow {
				time.Sleep(100 * time.Microsecond) // a slow reader, not a wait for readiness
			}
		}
		return got, nil
	}
	switch mode {
	case modeEcho, modeSlow:
		wrote := make(chan error, 1)
		go func() {
			_, err := c.Write(want)
			if err == nil {
				err = c.CloseWrite()
			}
			wrote <- err
		}()
		got, err := read(len(want), mode == modeSlow)
		if err == nil {
			var one [1]byte
			if _, err = c.Read(one[:]); err == io.EOF {
				err = nil
			} else if err == nil {
				err = errors.New("more than the echo")
				out.alien = true
			}
		}
		werr := <-wrote
		out.ok = err == nil && werr == nil && len(got) == len(want)
		out.err = errors.Join(err, werr)
	case modeHandler:
		if _, err := c.Write(want); err != nil {
			out.err = err
			return out
		}
		got, err := read(len(want), false)
		if err == nil {
			var one [1]byte
			if _, err = c.Read(one[:]); err == io.EOF {
				err = nil // the handler's FIN came first
			} else if err == nil {
				err = errors.New("more than the echo")
				out.alien = true
			}
		}
		if err == nil {
			if _, err = c.Write(probeBytes(id, 64, true)); err == nil {
				err = c.CloseWrite()
			}
		}
		out.ok = err == nil && len(got) == len(want)
		out.err = err
	case modeReset:
		k := rng.IntN(len(want) + 1)
		if rng.IntN(4) > 0 {
			go func() { _, _ = c.Write(want) }()
		} else {
			k = 0 // reset before a byte is sent
		}
		_, err := read(k, false)
		_ = c.SetLinger(0)
		out.ok = true // a reset is all it asks for
		if out.alien {
			out.ok, out.err = false, err
		}
	}
	return out
}

// probeEvents collects a listener's connection events.
type probeEvents struct {
	mu     sync.Mutex
	byPort map[uint32][]string // connection ids opened from each peer port, in order
	closed map[string]*listenerdv1.ConnectionClosed
	taken  map[string]int
	opened int
}

func watchProbe(t *testing.T, c *listenerd.Client, lid string) (*probeEvents, func()) {
	ev := &probeEvents{byPort: map[uint32][]string{}, closed: map[string]*listenerdv1.ConnectionClosed{}, taken: map[string]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	zero := uint64(0)
	done := make(chan error, 1)
	go func() {
		done <- c.Watch(ctx, &listenerdv1.WatchEventsRequest{ListenerIds: []string{lid}, AfterSequence: &zero}, func(e *listenerdv1.Event) error {
			ev.mu.Lock()
			defer ev.mu.Unlock()
			switch {
			case e.GetConnectionOpened() != nil:
				o := e.GetConnectionOpened()
				ev.byPort[o.GetTuple().GetRemotePort()] = append(ev.byPort[o.GetTuple().GetRemotePort()], o.GetConnectionId())
				ev.opened++
			case e.GetConnectionTaken() != nil:
				ev.taken[e.GetConnectionTaken().GetConnectionId()]++
			case e.GetConnectionClosed() != nil:
				ev.closed[e.GetConnectionClosed().GetConnectionId()] = e.GetConnectionClosed()
			}
			return nil
		})
	}()
	return ev, func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("watch: %v", err)
		}
	}
}

// A peer's port does not name one connection of a run: once a port's
// last connection is in TIME_WAIT for a second (net.ipv4.tcp_tw_reuse,
// 2 by default: loopback), the kernel may give it to a later dial to the
// same address, and it does when the ephemeral range wraps around (as on
// a machine busy with other tests' connections). A port's connections
// are in the order its peers dialed, though: a dial gets a port only once
// its previous connection's socket is closed, and the daemon opens them
// in accept order. So a peer's connection is the k-th opened from its
// port when it is the k-th peer (by dial order) on that port. A dial the
// daemon reset before it returned (see "no connection" below) opened a
// connection from a port the test does not know, which may be one a peer
// used before or after: r of them on a port make the k-th peer's
// connection one of the k-th to the (k+r)-th.

// portPeers numbers each peer on its port: its place among the peers that
// dialed from that port (by dial order), and how many did.
func portPeers(outcomes []peerOutcome) (place map[uint64]int, count map[uint32]int) {
	byPort := map[uint32][]peerOutcome{}
	for _, o := range outcomes {
		if o.port != 0 {
			byPort[o.port] = append(byPort[o.port], o)
		}
	}
	place, count = map[uint64]int{}, map[uint32]int{}
	for port, ps := range byPort {
		slices.SortFunc(ps, func(a, b peerOutcome) int { return cmp.Compare(a.dialed, b.dialed) })
		for k, o := range ps {
			place[o.id] = k
		}
		count[port] = len(ps)
	}
	return place, count
}

// connsFor is the connections one of which is the k-th of n peers' on
// port (see portPeers), once the daemon has opened as many from the port
// as dialed from it; nil before.
func (ev *probeEvents) connsFor(port uint32, k, n int) []string {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	ids := ev.byPort[port]
	if len(ids) < n {
		return nil
	}
	return slices.Clone(ids[k : k+len(ids)-n+1])
}

// closedOf is the closed event of connection id, nil while it is open.
func (ev *probeEvents) closedOf(id string) *listenerdv1.ConnectionClosed {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	return ev.closed[id]
}

// closedFor is the closed event of the last connection opened from port
// that is not in old.
func (ev *probeEvents) closedFor(port uint32, old map[string]bool) (string, *listenerdv1.ConnectionClosed) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	ids := ev.byPort[port]
	if len(ids) == 0 || old[ids[len(ids)-1]] {
		return "", nil
	}
	id := ids[len(ids)-1]
	return id, ev.closed[id]
}

func TestReusedStreamsUnderFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("a load of a few seconds")
	}
	const (
		conns    = 600 // peers in all
		atOnce   = 16  // peers at a time
		conc     = 8   // each handler's concurrency; half of it ready streams
		handlers = 3   // attached at a time, one of them for the whole run
		every    = 40  // a handler is killed or detached (and replaced) after this many peers
	)
	admin := dialClient(t)
	r, err := admin.CreateListener(context.Background(), &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{
		Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Stream{Stream: &listenerdv1.StreamHandler{}}}}})
	if err != nil {
		t.Fatal(err)
	}
	lid, addr := r.GetListener().GetId(), r.GetListener().GetStatus().GetBoundAddress()
	ev, stopWatch := watchProbe(t, admin, lid)
	var badMu sync.Mutex
	var bads []string
	bad := func(s string) { badMu.Lock(); bads = append(bads, s); badMu.Unlock() }

	stable := attachProbe(t, lid, conc, bad)
	others := make([]*probeHandlerProc, handlers-1)
	for i := range others {
		others[i] = attachProbe(t, lid, conc, bad)
	}

	// The load, and the kills as it goes: each after `every` more peers
	// finished, not on a clock.
	outcomes := make([]peerOutcome, conns)
	var next, finished, dials atomic.Int64
	kick := make(chan struct{}, conns)
	var wg sync.WaitGroup
	for w := range atOnce {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			modes := []byte{modeEcho, modeEcho, modeEcho, modeHandler, modeHandler, modeReset, modeReset, modeSlow}
			for {
				i := next.Add(1) - 1
				if i >= conns {
					return
				}
				outcomes[i] = probePeer(addr, uint64(i)+1, modes[rng.IntN(len(modes))], rng, &dials)
				if finished.Add(1)%every == 0 {
					kick <- struct{}{}
				}
			}
		}()
	}
	kills, detaches := 0, 0
	loadDone := make(chan struct{})
	go func() { wg.Wait(); close(loadDone) }()
	rng := rand.New(rand.NewPCG(1, 2))
	for running := true; running; {
		select {
		case <-loadDone:
			running = false
		case <-kick:
			i := rng.IntN(len(others))
			if rng.IntN(2) == 0 {
				others[i].kill()
				kills++
			} else {
				others[i].detach()
				detaches++
			}
			others[i] = attachProbe(t, lid, conc, bad)
		}
	}
	t.Logf("%d peers, %d handler kills, %d detaches", conns, kills, detaches)

	// Every peer got its echo, or the daemon says why not.
	fails := map[string]int{}
	// The opened events of every connection the peers made are in first:
	// those their dials returned, and those the daemon reset before they
	// returned (ECONNRESET, "no connection" below). The peers are matched
	// to them by port and order (see portPeers).
	want := int(dials.Load())
	for _, o := range outcomes {
		if o.port == 0 && errors.Is(o.err, syscall.ECONNRESET) {
			want++
		}
	}
	testkit.Eventually(t, func() bool {
		ev.mu.Lock()
		defer ev.mu.Unlock()
		return ev.opened >= want
	}, "the opened events of the peers' connections")
	place, onPort := portPeers(outcomes)
	for _, o := range outcomes {
		if o.alien {
			t.Errorf("connection %d (mode %c): read bytes that were not its own: %v", o.id, o.mode, o.err)
			continue
		}
		if o.port == 0 {
			// "connect: connection reset by peer" (about one in 600, in
			// half the runs): the daemon accepted it and reset it before
			// the dial returned, its handler gone (checked below).
			t.Logf("connection %d (mode %c): no connection: %v", o.id, o.mode, o.err)
			fails["no connection"]++
			continue
		}
		// Its connection (one of cids, see portPeers), each closed.
		var cids []string
		var cls []*listenerdv1.ConnectionClosed
		if !waitFor(guardOr(30*time.Second), func() bool {
			if cids = ev.connsFor(o.port, place[o.id], onPort[o.port]); cids == nil {
				return false
			}
			cls = cls[:0]
			for _, cid := range cids {
				if cl := ev.closedOf(cid); cl != nil {
					cls = append(cls, cl)
				}
			}
			return len(cls) == len(cids)
		}) {
			t.Errorf("connection %d (%v, mode %c, port %d, ok %v, %v): no closed event; the daemon lists %v", o.id, cids, o.mode, o.port, o.ok, o.err, listConns(admin, lid))
			if f, err := os.Create("/tmp/rf_goroutines.txt"); err == nil {
				_ = pprof.Lookup("goroutine").WriteTo(f, 2)
				f.Close()
			}
			continue
		}
		if o.ok {
			continue
		}
		for i, cl := range cls {
			why := cl.GetReason()
			if len(cls) == 1 {
				fails[fmt.Sprintf("%c %s", o.mode, why)]++
			}
			switch why {
			case listenerdv1.CloseReason_CLOSE_REASON_HANDLER_GONE:
			case listenerdv1.CloseReason_CLOSE_REASON_HANDLER_RESET:
				// A detaching handler resets a connection bound to its
				// ready stream that Accept did not return (Listener.Close).
			default:
				t.Errorf("connection %d (%s of %v, mode %c, port %d): %v; closed %v (%s): not a reason for a lost echo", o.id, cids[i], cids, o.mode, o.port, o.err, why, cl.GetError())
			}
		}
		if len(cls) > 1 {
			fails[fmt.Sprintf("%c one of %d", o.mode, len(cls))]++
		}
	}
	t.Logf("peers without their whole echo, by mode and close reason: %v", fails)
	if n := fails["no connection"]; n > 0 {
		// Connections the daemon opened that no peer's dial returned: their
		// closes say what the refused dials were. A port that peers used
		// too has one connection more than its peers for each: as many of
		// its connections at least closed so.
		unclaimed := map[string]int{}
		ev.mu.Lock()
		for port, ids := range ev.byPort {
			extra := len(ids) - onPort[port]
			if extra <= 0 {
				continue
			}
			gone := 0
			for _, id := range ids {
				why := ev.closed[id].GetReason()
				if why == listenerdv1.CloseReason_CLOSE_REASON_HANDLER_GONE {
					gone++
				} else if onPort[port] == 0 {
					t.Errorf("connection %s, which no dial returned, closed %v", id, why)
				}
			}
			unclaimed[fmt.Sprintf("port of %d peers", onPort[port])] += extra
			if gone < extra {
				t.Errorf("port %d: %d connections for %d peers, %d of them closed HANDLER_GONE: a connection no dial returned closed otherwise", port, len(ids), onPort[port], gone)
			}
		}
		ev.mu.Unlock()
		t.Logf("%d dials refused; connections no dial returned, by their port's peers: %v", n, unclaimed)
	}
	badMu.Lock()
	for _, b := range bads {
		t.Error(b)
	}
	badMu.Unlock()

	// The handlers that came and went are gone; the stable one is the
	// only one left.
	for _, h := range others {
		h.detach()
	}
	// No connection is left.
	testkit.Eventually(t, func() bool {
		g, err := admin.GetListener(context.Background(), &listenerdv1.GetListenerRequest{Id: lid})
		return err == nil && g.GetListener().GetStatus().GetActiveConnections() == 0
	}, "no connection left open")
	ev.mu.Lock()
	opened, closed := ev.opened, len(ev.closed)
	for id, n := range ev.taken {
		if n != 1 {
			t.Errorf("connection %s taken %d times", id, n)
		}
	}
	ev.mu.Unlock()
	if opened != closed {
		t.Errorf("%d connections opened, %d closed", opened, closed)
	}
	old := map[string]bool{} // the load's connections: the holds' ports may be theirs
	ev.mu.Lock()
	for id := range ev.closed {
		old[id] = true
	}
	ev.mu.Unlock()

	// The stable handler takes conc connections at once still: its load
	// came back to zero.
	holds := make([]*net.TCPConn, conc)
	for i := range holds {
		holds[i] = testkit.Dial(t, addr)
		if _, err := holds[i].Write(probeHead(modeHold, 0, uint64(conns+1+i))); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, func() bool { return stable.held.Load() == conc }, fmt.Sprintf("the stable handler holding %d connections at once", conc))

	// The listener closes under them (force), its handler attached with
	// streams parked: every held connection is destroyed (LISTENER_CLOSED),
	// its peer sees it end, and the handler's streams and goroutines end.
	if _, err := admin.CloseListener(context.Background(), &listenerdv1.CloseListenerRequest{Id: lid, Force: true}); err != nil {
		t.Fatal(err)
	}
	for i, h := range holds {
		_ = h.SetReadDeadline(time.Now().Add(testkit.Guard))
		if _, err := io.Copy(io.Discard, h); errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("held connection %d still open after its listener closed", i)
		}
		_ = h.Close()
		port := uint32(h.LocalAddr().(*net.TCPAddr).Port)
		var cl *listenerdv1.ConnectionClosed
		testkit.Eventually(t, func() bool { _, cl = ev.closedFor(port, old); return cl != nil }, "the held connection's closed event")
		if cl.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_LISTENER_CLOSED {
			t.Errorf("held connection %d: closed %v; want LISTENER_CLOSED", i, cl.GetReason())
		}
	}
	stable.detach() // returns once its accept loop and connections have ended
	stopWatch()
}

// waitFor polls cond until it holds or guard passes.
func waitFor(guard time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(guard)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

func guardOr(d time.Duration) time.Duration { return min(d, testkit.Guard) }

// listConns describes the listener's open connections.
func listConns(c *listenerd.Client, lid string) string {
	r, err := c.ListConnections(context.Background(), &listenerdv1.ListConnectionsRequest{ListenerId: lid})
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, x := range r.GetConnections() {
		out = append(out, fmt.Sprintf("%s port %d in %d out %d state %v", x.GetId(), x.GetTuple().GetRemotePort(), x.GetBytesIn(), x.GetBytesOut(), x.GetState()))
	}
	return fmt.Sprint(out)
}
