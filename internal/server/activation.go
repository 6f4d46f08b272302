package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"

	sdactivation "github.com/coreos/go-systemd/v22/activation"

	"github.com/listenerd/listenerd/internal/state"
)

// Sockets the service manager passes in (sd_listen_fds: $LISTEN_PID is
// this process, $LISTEN_FDS descriptors from 3, $LISTEN_FDNAMES their
// names, colon-separated, optional). A listening unix stream socket is the
// API socket (socket activation: the daemon binds no --socket); one named
// listener-<id> is a listener's socket from systemd's descriptor store,
// taken back by the saved listener of that id. Anything else is closed.

// fdStorePrefix names a listener's socket in the descriptor store.
const fdStorePrefix = "listener-"

// activation is what the service manager passed in.
type activation struct {
	api       net.Listener        // nil: none passed
	listeners map[string]*os.File // by listener id
}

// listenFDs takes the descriptors passed by the service manager
// (go-systemd's activation.Files: close-on-exec, named by
// $LISTEN_FDNAMES); nil when none were (or they were meant for another
// process). The variables are unset either way: they are not for this
// process's children.
func listenFDs(log *slog.Logger) *activation {
	files := sdactivation.Files(true)
	if len(files) == 0 {
		return nil
	}
	a := &activation{listeners: map[string]*os.File{}}
	for _, f := range files {
		name, fd := f.Name(), int(f.Fd())
		if id, ok := strings.CutPrefix(name, fdStorePrefix); ok && id != "" {
			if old := a.listeners[id]; old != nil {
				old.Close() // one socket per listener: the last one stored
			}
			a.listeners[id] = f
			continue
		}
		if a.api == nil && isUnixStreamListener(fd) {
			ln, err := net.FileListener(f)
			f.Close()
			if err != nil {
				log.Warn("passed API socket not used", "fd", fd, "err", err)
				continue
			}
			a.api = ln
			continue
		}
		log.Warn("passed descriptor not used: neither a listening unix stream socket nor named listener-<id>", "fd", fd, "name", name)
		f.Close()
	}
	return a
}

// isUnixStreamListener says whether fd is a listening unix stream socket.
func isUnixStreamListener(fd int) bool {
	typ, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TYPE)
	if err != nil || typ != syscall.SOCK_STREAM {
		return false
	}
	if acc, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN); err != nil || acc == 0 {
		return false
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		return false
	}
	_, ok := sa.(*syscall.SockaddrUnix)
	return ok
}

// takeListeners hands over the listeners' sockets, for the restore.
func (a *activation) takeListeners() map[string]*os.File {
	if a == nil {
		return nil
	}
	m := a.listeners
	a.listeners = nil
	return m
}

// close closes what was passed and not taken.
func (a *activation) close() {
	if a == nil {
		return
	}
	if a.api != nil {
		a.api.Close()
	}
	for _, f := range a.listeners {
		f.Close()
	}
}

// activatedAPI serves the API on the socket passed in: its permissions
// and directory are the service manager's (SocketMode=0600), and nothing
// is removed at exit. The lock beside --socket is still taken, so that
// two daemons never share one state, and --socket should name the passed
// socket: the handover side socket sits beside it and an upgrade checks it.
func (a *activation) activatedAPI(socket string, log *slog.Logger) (net.Listener, *os.File, error) {
	lock, err := state.Lock(socket + ".lock")
	if errors.Is(err, state.ErrLocked) {
		return nil, nil, fmt.Errorf("another listenerd is serving on %s", socket)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("socket lock: %w", err)
	}
	ln := a.api
	a.api = nil
	if path := ln.Addr().String(); path != socket {
		log.Warn("the API socket passed in is not --socket; the handover socket and upgrades go by --socket", "passed", path, "socket", socket)
	}
	log.Info("API socket passed in by the service manager", "socket", ln.Addr().String())
	return ln, lock, nil
}
