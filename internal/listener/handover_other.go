//go:build !linux

package listener

import (
	"fmt"
	"net"
)

// Handover needs Linux (SO_PEERCRED, TCP_INFO's byte counts): elsewhere a
// side connection is refused.

func peerAllowed(*net.UnixConn) error {
	return fmt.Errorf("%w: handover needs Linux", ErrHandoverRefused)
}

func sendConn(*net.UnixConn, *Conn) error {
	return fmt.Errorf("%w: handover needs Linux", ErrHandoverRefused)
}

func shutdown(c *net.TCPConn, reset bool) {
	if reset {
		_ = c.SetLinger(0)
	}
	_ = c.CloseRead()
	_ = c.CloseWrite()
}

func abort(*net.TCPConn) bool { return false }

func tcpBytes(*net.TCPConn) (in, out uint64, ok bool) { return 0, 0, false }

func abortive(*net.TCPConn) bool { return false }
