package listener

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// errPeerGone is a half-open socket that the kernel closed without an
// error to report.
var errPeerGone = errors.New("the peer is gone")

// peerGone waits, without reading, until the half-open socket fails: its
// keepalive probes went unanswered (ETIMEDOUT) or were answered with a
// reset (the peer's socket is gone). It returns that error, or nil once
// the daemon closes the socket. The runtime's poller wakes the wait on
// the socket's error; until then the goroutine waits in the poller, like
// an idle connection's.
func (c *Conn) peerGone() error {
	rc, err := c.c.SyscallConn()
	if err != nil {
		<-c.killed()
		return nil
	}
	_ = c.c.SetReadDeadline(time.Time{}) // the pump's idle deadline: the idle timer bounds the hold
	var gone error
	err = rc.Read(func(fd uintptr) bool {
		if n, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); err == nil && n != 0 {
			gone = lost(syscall.Errno(n))
			return true
		}
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil && info.State == tcpClose {
			gone = fmt.Errorf("half-open connection lost: %w", errPeerGone)
			return true
		}
		return false // wait for the next event on the socket
	})
	if gone != nil {
		return gone
	}
	if errors.Is(err, net.ErrClosed) {
		return nil // closed by the daemon, whose reason is recorded
	}
	return err
}

// lost says how a half-open connection was lost.
func lost(errno syscall.Errno) error {
	switch errno {
	case unix.ETIMEDOUT:
		return fmt.Errorf("half-open connection lost: the peer answered no keepalive probe: %w", errno)
	case unix.EPIPE, unix.ECONNRESET:
		return fmt.Errorf("half-open connection lost: the peer reset it (its socket is gone): %w", errno)
	}
	return fmt.Errorf("half-open connection lost: %w", errno)
}

// tcpClose is Linux's TCP_CLOSE state (include/net/tcp_states.h).
const tcpClose = 7
