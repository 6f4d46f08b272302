package listener

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
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
		if l == nil || l.spec.Handler.Kind != HandlerForward {
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
		next, err := resolveUpstream(ctx, l.spec.Handler.Upstream)
		if err != nil {
			return nil // that listener's own dial reports it
		}
		target = next
	}
	return nil
}

// serving returns the listening listener that a connection to t reaches,
// or nil.
func (m *Manager) serving(t netip.AddrPort) *Listener {
	dst := t.Addr().Unmap()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.byID {
		if l.boundPort != t.Port() || State(l.state.Load()) != StateListening || l.ln == nil {
			continue
		}
		ap, err := netip.ParseAddrPort(l.bound)
		if err != nil {
			continue
		}
		bound := ap.Addr().Unmap()
		if bound == dst || bound.IsUnspecified() && (bound.Is6() || dst.Is4()) && isLocal(dst) {
			return l
		}
	}
	return nil
}

// isLocal reports whether a connection to ip stays on this machine.
func isLocal(ip netip.Addr) bool {
	if ip.IsLoopback() || ip.IsUnspecified() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Unmap() == ip {
			return true
		}
	}
	return false
}

// resolveUpstream resolves a forward upstream to the first address its
// dial would try.
func resolveUpstream(ctx context.Context, upstream string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(upstream)
	if err != nil {
		return netip.AddrPort{}, err
	}
	p, err := net.LookupPort("tcp", port)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if err != nil || len(ips) == 0 {
			return netip.AddrPort{}, fmt.Errorf("resolve %s: %v", host, err)
		}
		ip = ips[0]
	}
	return netip.AddrPortFrom(ip.Unmap().WithZone(""), uint16(p)), nil
}
