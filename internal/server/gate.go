package server

import (
	"container/list"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc/peer"
)

// Bounds of the TCP API's connections that have made no authenticated
// call yet: anyone who can reach the port can open them, so they must not
// keep out those who hold credentials.
const (
	// DefaultUnauthTimeout is how long a connection has, from its accept,
	// for its TLS handshake and its first authenticated call.
	DefaultUnauthTimeout = 10 * time.Second
	// DefaultUnauthPerSource caps the unauthenticated connections from one
	// source (an IPv4 address, an IPv6 /64).
	DefaultUnauthPerSource = 16
)

// gate is the TCP API's listener. It serves at most max connections at
// once, and keeps the ones without credentials from keeping out the ones
// with: a connection is unauthenticated until its first call that passes
// authentication (trust), and until then it is closed after timeout, it
// makes way for a newer one from its source past perSource, and, when
// every slot is taken, the oldest unauthenticated one makes way for the
// next connection. Only when every slot holds an authenticated connection
// do new ones wait, in the kernel's queue.
type gate struct {
	net.Listener
	max, perSource int
	timeout        time.Duration
	log            *refusalLog

	mu       sync.Mutex
	open     int                         // connections holding a slot
	unauth   list.List                   // of *gateConn, oldest first
	bySource map[netip.Prefix]*list.List // unauthenticated ones by source, oldest first
	byAddr   map[string]*gateConn        // by remote address, for trust
	freed    chan struct{}               // a slot freed (one slot: never blocks)
	done     chan struct{}               // closed by Close
	once     sync.Once
}

func newGate(ln net.Listener, max, perSource int, timeout time.Duration, log *refusalLog) *gate {
	return &gate{Listener: ln, max: max, perSource: perSource, timeout: timeout, log: log,
		bySource: map[netip.Prefix]*list.List{}, byAddr: map[string]*gateConn{},
		freed: make(chan struct{}, 1), done: make(chan struct{})}
}

// gateConn is one connection of the gate.
type gateConn struct {
	net.Conn
	g       *gate
	addr    string
	source  netip.Prefix
	elem    *list.Element // in g.unauth; nil once trusted or gone
	srcElem *list.Element // in g.bySource[source]
	timer   *time.Timer
	once    sync.Once
}

// Accept waits for a slot, then for a connection, which is unauthenticated
// until trusted.
func (g *gate) Accept() (net.Conn, error) {
	over, err := g.acquire()
	if err != nil {
		return nil, err
	}
	c, err := g.Listener.Accept()
	if err != nil {
		g.release()
		return nil, err
	}
	gc := g.track(c)
	if over {
		g.makeRoom()
	}
	return gc, nil
}

// Close closes the listener; connections are closed by their owners.
func (g *gate) Close() error {
	g.once.Do(func() { close(g.done) })
	return g.Listener.Close()
}

// acquire takes a slot for the next connection. When every slot is taken
// and some are unauthenticated, it takes one past max (over), which the
// next connection, once it comes, makes by closing the oldest of them
// (makeRoom); when every slot holds an authenticated connection, it waits
// for one to be given back.
func (g *gate) acquire() (over bool, err error) {
	g.mu.Lock()
	for {
		if g.open < g.max || g.unauth.Len() > 0 {
			over = g.open >= g.max
			g.open++
			g.mu.Unlock()
			return over, nil
		}
		g.mu.Unlock()
		select {
		case <-g.freed:
		case <-g.done:
			return false, net.ErrClosed
		}
		g.mu.Lock()
	}
}

// makeRoom closes the oldest unauthenticated connection while more than
// max are open: the newest one only if every other one is authenticated.
func (g *gate) makeRoom() {
	g.mu.Lock()
	var victim *gateConn
	if front := g.unauth.Front(); front != nil && g.open > g.max {
		victim = front.Value.(*gateConn)
	}
	g.mu.Unlock()
	if victim != nil {
		victim.refuse("every connection slot is taken; the oldest without credentials makes way")
	}
}

// release gives a slot back.
func (g *gate) release() {
	g.mu.Lock()
	g.open--
	g.mu.Unlock()
	select {
	case g.freed <- struct{}{}:
	default:
	}
}

// track registers c, unauthenticated, closing the oldest unauthenticated
// connection of its source when it has perSource of them already.
func (g *gate) track(c net.Conn) *gateConn {
	gc := &gateConn{Conn: c, g: g, addr: c.RemoteAddr().String(), source: sourceOf(c.RemoteAddr())}
	g.mu.Lock()
	var victim *gateConn
	src := g.bySource[gc.source]
	if src == nil {
		src = list.New()
		g.bySource[gc.source] = src
	} else if src.Len() >= g.perSource {
		victim = src.Front().Value.(*gateConn)
	}
	gc.elem = g.unauth.PushBack(gc)
	gc.srcElem = src.PushBack(gc)
	g.byAddr[gc.addr] = gc
	gc.timer = time.AfterFunc(g.timeout, func() {
		gc.refuse("no authenticated call in time")
	})
	g.mu.Unlock()
	if victim != nil {
		victim.refuse("too many connections without credentials from its source; the oldest makes way")
	}
	return gc
}

// forgetLocked takes gc off the unauthenticated lists; g.mu must be held.
func (g *gate) forgetLocked(gc *gateConn) {
	if gc.elem == nil {
		return
	}
	g.unauth.Remove(gc.elem)
	if src := g.bySource[gc.source]; src != nil {
		src.Remove(gc.srcElem)
		if src.Len() == 0 {
			delete(g.bySource, gc.source)
		}
	}
	gc.elem, gc.srcElem = nil, nil
	gc.timer.Stop()
}

// trust marks the connection of a call that passed authentication: it
// keeps its slot for as long as it is open.
func (g *gate) trust(ctx context.Context) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return
	}
	g.mu.Lock()
	if gc := g.byAddr[p.Addr.String()]; gc != nil {
		g.forgetLocked(gc)
	}
	g.mu.Unlock()
}

// unauthenticated returns how many connections are unauthenticated, and
// how many from source.
func (g *gate) unauthenticated(source netip.Prefix) (all, from int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if src := g.bySource[source]; src != nil {
		from = src.Len()
	}
	return g.unauth.Len(), from
}

// refuse closes an unauthenticated connection, and logs why (rate
// limited). It does nothing to one trusted or closed meanwhile.
func (gc *gateConn) refuse(why string) {
	gc.g.mu.Lock()
	unauth := gc.elem != nil
	gc.g.mu.Unlock()
	if !unauth {
		return
	}
	gc.g.log.refused(slog.LevelInfo, "closed a TCP API connection without credentials", "reason", why, "peer", gc.addr)
	_ = gc.Close()
}

// Close closes the connection and gives its slot back, once.
func (gc *gateConn) Close() error {
	err := gc.Conn.Close()
	gc.once.Do(func() {
		g := gc.g
		g.mu.Lock()
		g.forgetLocked(gc)
		if g.byAddr[gc.addr] == gc {
			delete(g.byAddr, gc.addr)
		}
		g.mu.Unlock()
		g.release()
	})
	return err
}

// sourceOf is the source a connection counts against: its IPv4 address,
// or its IPv6 /64 (what one host or site usually has to itself).
func sourceOf(a net.Addr) netip.Prefix {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Prefix{}
	}
	ip := ta.AddrPort().Addr().Unmap()
	if ip.Is4() {
		return netip.PrefixFrom(ip, 32)
	}
	p, _ := ip.WithZone("").Prefix(64)
	return p
}

// refusalLog logs refusals (calls without valid credentials, connections
// closed for lack of them) at most once a second after a burst, each line
// saying how many were not logged since the last: whoever can reach the
// TCP API cannot grow the log faster than that.
type refusalLog struct {
	log *slog.Logger
	now func() time.Time

	mu      sync.Mutex
	tokens  float64
	last    time.Time
	skipped int
}

// refusalBurst and refusalEvery shape the refusal log.
const (
	refusalBurst = 10
	refusalEvery = time.Second
)

func newRefusalLog(log *slog.Logger) *refusalLog {
	return &refusalLog{log: log, now: time.Now, tokens: refusalBurst}
}

// allow reports whether a refusal may be logged now, and how many were not
// since the last one logged.
func (r *refusalLog) allow() (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if !r.last.IsZero() {
		r.tokens = min(refusalBurst, r.tokens+now.Sub(r.last).Seconds()/refusalEvery.Seconds())
	}
	r.last = now
	if r.tokens < 1 {
		r.skipped++
		return false, 0
	}
	r.tokens--
	n := r.skipped
	r.skipped = 0
	return true, n
}

// refused logs a refusal, unless over the rate.
func (r *refusalLog) refused(level slog.Level, msg string, args ...any) {
	if r == nil {
		return
	}
	ok, skipped := r.allow()
	if !ok {
		return
	}
	if skipped > 0 {
		args = append(args, "refusals_not_logged", skipped)
	}
	r.log.Log(context.Background(), level, msg, args...)
}

// File is a copy of the TCP API's socket, for an upgrade.
func (g *gate) File() (*os.File, error) { return fileOf(g.Listener) }
