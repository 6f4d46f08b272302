//go:build linux

package listener

import (
	"fmt"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PeerCred is the process at the other end of c (SO_PEERCRED).
func PeerCred(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

// peerAllowed says whether c's peer is this process's user or root.
func peerAllowed(c *net.UnixConn) error {
	cred, err := PeerCred(c)
	if err != nil {
		return err
	}
	if cred.Uid != 0 && cred.Uid != uint32(os.Getuid()) {
		return fmt.Errorf("%w: peer uid %d is neither the daemon's (%d) nor root", ErrHandoverRefused, cred.Uid, os.Getuid())
	}
	return nil
}

// sendConn sends c's descriptor with its id and addresses.
func sendConn(side *net.UnixConn, c *Conn) error {
	rc, err := c.c.SyscallConn()
	if err != nil {
		return err
	}
	msg := []byte(fmt.Sprintf("%s %s %s", c.ID(), c.tuple.Remote, c.tuple.Local))
	var serr error
	if err := rc.Control(func(fd uintptr) {
		_, _, serr = side.WriteMsgUnix(msg, unix.UnixRights(int(fd)), nil)
	}); err != nil {
		return err
	}
	return serr
}

// shutdown ends both directions of a handed-over socket for every holder
// of it; with reset, the daemon's close that follows is an RST.
func shutdown(c *net.TCPConn, reset bool) {
	if reset {
		_ = c.SetLinger(0)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) { _ = syscall.Shutdown(int(fd), syscall.SHUT_RDWR) })
}

// abort resets a handed-over socket for every holder of it: a connect to
// AF_UNSPEC disconnects a TCP socket (the kernel's tcp_disconnect), which
// sends the peer an RST from any state that has one to send and fails
// every holder's next read with ECONNRESET. Closing the daemon's copy
// with SO_LINGER 0 would not: the handler's copy keeps the socket, and
// shutdown sends a FIN. It reports false when the kernel refused (since
// Linux 6.6, EBUSY while a thread of the handler is blocked in a read of
// it).
func abort(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		sa := unix.RawSockaddr{Family: unix.AF_UNSPEC}
		_, _, errno = unix.Syscall(unix.SYS_CONNECT, fd, uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	}); err != nil {
		return false
	}
	return errno == 0
}

// tcpBytes reads the bytes a socket received and the bytes its peer
// acknowledged (TCP_INFO), for a handed-over connection's counts.
func tcpBytes(c *net.TCPConn) (in, out uint64, ok bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	var info *unix.TCPInfo
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || gerr != nil {
		return 0, 0, false
	}
	// A FIN takes a sequence number: each count holds one past the data
	// once that side's FIN is in. The state says which FINs are: after a
	// reset (CLOSED without both FINs) the counts may be one short.
	in, out = info.Bytes_received, info.Bytes_acked
	switch info.State {
	case unix.BPF_TCP_CLOSE_WAIT, unix.BPF_TCP_LAST_ACK, unix.BPF_TCP_CLOSING:
		in = max(in, 1) - 1
	case unix.BPF_TCP_FIN_WAIT2:
		out = max(out, 1) - 1
	case unix.BPF_TCP_TIME_WAIT, unix.BPF_TCP_CLOSE:
		in, out = max(in, 1)-1, max(out, 1)-1
	}
	return in, out, true
}

// abortive says whether a handler set SO_LINGER to zero on the socket
// before closing it, Go's SetLinger(0): it wants the peer reset, not
// ended.
func abortive(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var l *unix.Linger
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		l, gerr = unix.GetsockoptLinger(int(fd), unix.SOL_SOCKET, unix.SO_LINGER)
	}); err != nil || gerr != nil {
		return false
	}
	return l.Onoff != 0 && l.Linger == 0
}
