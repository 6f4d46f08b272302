package listener

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// resolveHost turns a spec's host (DefaultHost when empty) into the
// address to bind, like Node's listen(port, host): an IP literal as is, a
// name through the resolver, first address wins.
func resolveHost(ctx context.Context, host string) (netip.Addr, error) {
	if host == "" {
		host = DefaultHost
	}
	ip, err := netip.ParseAddr(host)
	if err == nil && ip.Zone() != "" {
		return netip.Addr{}, Invalid("spec.host", "%q: zoned addresses are not supported", Clip(host))
	}
	if err != nil {
		if len(host) > 253 {
			return netip.Addr{}, Invalid("spec.host", "host name longer than 253 characters")
		}
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if ip, err = lookupFirst(ctx, host); err != nil {
			return netip.Addr{}, Invalid("spec.host", "cannot resolve %q: %v", host, err)
		}
	}
	ip = ip.Unmap()
	if ip.IsMulticast() || ip == broadcast {
		return netip.Addr{}, Invalid("spec.host", "%q is %s, a multicast or broadcast address: a listener binds an address of this machine, 0.0.0.0 or ::", host, ip)
	}
	if ip.Is6() && ip.IsLinkLocalUnicast() {
		return netip.Addr{}, Invalid("spec.host", "%q is %s, an IPv6 link-local address: binding one needs a zone, and zoned addresses are not supported; use ::, or a global or unique-local address", host, ip)
	}
	return ip, nil
}

// lookupFirst resolves a host name to its first address, the one a
// listen or a dial takes.
func lookupFirst(ctx context.Context, host string) (netip.Addr, error) {
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err == nil && len(ips) == 0 {
		err = fmt.Errorf("no address")
	}
	if err != nil {
		return netip.Addr{}, err
	}
	return ips[0], nil
}

var broadcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})

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
		if ip, err = lookupFirst(ctx, host); err != nil {
			return netip.AddrPort{}, fmt.Errorf("resolve %s: %v", host, err)
		}
	}
	return netip.AddrPortFrom(ip.Unmap().WithZone(""), uint16(p)), nil
}
