package listener

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// errLoop marks a forward dial refused because its upstream leads back
// into itself through this daemon's forward listeners.
var errLoop = errors.New("forward loop")

// maxLoopHops bounds the walk of checkLoop.
const maxLoopHops = 64

// checkLoop is called with the address a forward connection of from is
// about to dial (resolved, before the connect). It refuses the dial when
// that address is one of this daemon's forward listeners whose upstreams
// lead round in a loop: every connection would dial the next one until
// the daemon ran out of descriptors. Each hop's upstream is resolved as
// its own dial would (first address); a chain that ends anywhere else,
// or longer than maxLoopHops, is let through.
func (m *Manager) checkLoop(ctx context.Context, from *Listener, target netip.AddrPort) error {
	path := []*Listener{from}
	for range maxLoopHops {
		l := m.serving(target)
		if l == nil {
			return nil
		}
		fwd, ok := l.handler.(forwardTarget)
		if !ok {
			return nil
		}
		if slices.Contains(path, l) {
			path = append(path, l)
			ids := make([]string, len(path))
			for i, p := range path {
				ids[i] = p.id
			}
			return fmt.Errorf("%w: %s is listener %s, and the upstreams go round: %s", errLoop, target, l.id, strings.Join(ids, " -> "))
		}
		path = append(path, l)
		next, err := resolveUpstream(ctx, fwd.target())
		if err != nil {
			return nil // that listener's own dial reports it
		}
		target = next
	}
	return nil
}

// serving returns the listening listener that a connection to t reaches,
// or nil. A connection to 0.0.0.0 or :: reaches the loopback address of its
// family, as on Linux.
func (m *Manager) serving(t netip.AddrPort) *Listener {
	dst := t.Addr().Unmap()
	switch {
	case dst.IsUnspecified() && dst.Is4():
		dst = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	case dst.IsUnspecified():
		dst = netip.IPv6Loopback()
	}
	type candidate struct {
		l     *Listener
		bound netip.Addr
	}
	var found []candidate // on t's port: few, and checked outside the lock
	m.mu.Lock()
	for _, l := range m.byID {
		if l.boundPort != t.Port() || State(l.state.Load()) != StateListening || l.ln == nil {
			continue
		}
		if ap, err := netip.ParseAddrPort(l.bound); err == nil {
			found = append(found, candidate{l, ap.Addr().Unmap()})
		}
	}
	m.mu.Unlock()
	for _, c := range found {
		if c.bound == dst || c.bound.IsUnspecified() && (c.bound.Is6() || dst.Is4()) && isLocal(dst) {
			return c.l
		}
	}
	return nil
}

// isLocal reports whether a connection to ip stays on this machine. The
// machine's addresses are read at most once a second.
func isLocal(ip netip.Addr) bool {
	if ip.IsLoopback() || ip.IsUnspecified() {
		return true
	}
	return slices.Contains(localAddrs(), ip)
}

type addrCache struct {
	read  time.Time
	addrs []netip.Addr
}

var localCache atomic.Pointer[addrCache]

func localAddrs() []netip.Addr {
	if c := localCache.Load(); c != nil && time.Since(c.read) < time.Second {
		return c.addrs
	}
	c := &addrCache{read: time.Now()}
	if ifAddrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range ifAddrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				c.addrs = append(c.addrs, p.Addr().Unmap())
			}
		}
	}
	localCache.Store(c)
	return c.addrs
}
