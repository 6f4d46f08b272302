package listener

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
)

// ListenNetwork is the network to listen on addr (host:port) with, as a
// listener would: an IPv4 address, 0.0.0.0 included, takes IPv4 only;
// anything else is "tcp" (a host name, ::, which takes both families) or
// "tcp6".
func ListenNetwork(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "tcp"
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return "tcp"
	}
	return network(ip.Unmap())
}

// network picks the socket family like Node's listen(port, host): an IPv4
// address, 0.0.0.0 included, binds IPv4 only; :: binds both families
// (dual stack); any other IPv6 address binds IPv6.
func network(ip netip.Addr) string {
	switch {
	case ip.Is4():
		return "tcp4"
	case ip.IsUnspecified():
		return "tcp"
	default:
		return "tcp6"
	}
}

// bind opens the listening socket. A backlog, when asked for, is set with a
// second listen(2), which Linux allows on a listening socket.
func bind(ctx context.Context, ip netip.Addr, port uint16, spec Spec) (*net.TCPListener, error) {
	addr := netip.AddrPortFrom(ip, port).String()
	backlog := spec.Backlog
	// KeepAlive applies to every accepted connection: 0 is Go's default
	// (15s), negative turns it off. Set, it is the probes' interval as well
	// as the silence before the first (Go's KeepAlive alone leaves the
	// interval at 15s), so that a vanished peer is found after about ten
	// times it.
	lc := net.ListenConfig{KeepAlive: spec.KeepAlive}
	if spec.KeepAlive > 0 {
		lc.KeepAliveConfig = net.KeepAliveConfig{Enable: true, Idle: spec.KeepAlive, Interval: spec.KeepAlive}
	}
	nl, err := lc.Listen(ctx, network(ip), addr)
	if err != nil {
		return nil, bindError(addr, err)
	}
	ln := nl.(*net.TCPListener)
	if backlog > 0 {
		rc, err := ln.SyscallConn()
		if err == nil {
			var lerr error
			err = rc.Control(func(fd uintptr) { lerr = syscall.Listen(int(fd), backlog) })
			if err == nil {
				err = lerr
			}
		}
		if err != nil {
			_ = ln.Close()
			return nil, fmt.Errorf("listen %s with backlog %d: %w", addr, backlog, err)
		}
	}
	return ln, nil
}

func bindError(addr string, err error) error {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("%w: %v", ErrAddressInUse, err)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("%w: %v", ErrPermission, err)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return Invalid("spec.host", "%s is not an address of this machine: %v", addr, err)
	case errors.Is(err, syscall.EINVAL):
		return Invalid("spec.host", "%s cannot be bound: %v", addr, err)
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE), errors.Is(err, syscall.ENOBUFS), errors.Is(err, syscall.ENOMEM):
		return fmt.Errorf("%w: the daemon is out of file descriptors or socket memory: %v", ErrLimit, err)
	default:
		return fmt.Errorf("listen %s: %w", addr, err)
	}
}
