package testkit

import (
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// BlackHole returns a loopback address whose connects are never answered,
// as a firewalled or vanished host's: a listening socket with a backlog of
// 0 and its accept queue filled, so that the kernel drops every further
// SYN and a dial waits until its own timeout. It is closed at the end of
// the test.
func BlackHole(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) { lerr = syscall.Listen(int(fd), 0) }); err != nil || lerr != nil {
		t.Fatalf("listen with a backlog of 0: %v %v", err, lerr)
	}
	addr := ln.Addr().String()
	Dial(t, addr) // never accepted: it fills the queue
	// On a listening socket TCP_INFO's unacked is the accept queue's
	// length: once it holds the connection, new SYNs are dropped.
	Eventually(t, func() bool {
		var n uint32
		_ = rc.Control(func(fd uintptr) {
			if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
				n = info.Unacked
			}
		})
		return n >= 1
	}, "the black hole's accept queue to fill")
	return addr
}

// Vanish closes c, whose side has ended (CloseWrite), as a peer that
// disappears: its orphaned socket lives about a second (TCP_LINGER2)
// instead of a minute, then is gone without a word to the other end,
// whose next packet (a keepalive probe) is answered with a reset.
func Vanish(t testing.TB, c *net.TCPConn) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_LINGER2, 1) }); err != nil || serr != nil {
		t.Fatalf("TCP_LINGER2: %v %v", err, serr)
	}
	c.Close()
}
