package server

import (
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"syscall"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"
)

// fdStore keeps the listeners' sockets in systemd's descriptor store, so
// that a plain restart (FileDescriptorStoreMax= in the unit) finds them
// again in $LISTEN_FDS: each socket bound is sent with FDSTORE=1 and
// FDNAME=listener-<id> (sd_pid_notify_with_fds), after an FDSTOREREMOVE of
// the name, so that a listener bound again has one socket stored; a
// listener closed is removed. Nothing is sent when $NOTIFY_SOCKET is not
// set.
type fdStore struct {
	log *slog.Logger
}

// newFDStore returns nil when there is no service manager to keep sockets.
func newFDStore(log *slog.Logger) *fdStore {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return nil
	}
	return &fdStore{log: log}
}

// bound stores ln under the listener's name.
func (s *fdStore) bound(id string, ln *net.TCPListener) {
	name := fdStorePrefix + id
	s.send("FDSTOREREMOVE=1\nFDNAME="+name, nil)
	rc, err := ln.SyscallConn()
	if err == nil {
		err = rc.Control(func(fd uintptr) { s.send("FDSTORE=1\nFDNAME="+name, []int{int(fd)}) })
	}
	if err != nil {
		s.log.Warn("descriptor store: socket not stored", "listener", id, "err", err)
	}
}

// closed removes the listener's socket from the store.
func (s *fdStore) closed(id string) {
	s.send("FDSTOREREMOVE=1\nFDNAME="+fdStorePrefix+id, nil)
}

// forget removes the sockets passed back that no listener took.
func (s *fdStore) forget(ids []string) {
	for _, id := range ids {
		s.closed(id)
	}
}

func (s *fdStore) send(state string, fds []int) {
	if err := sdNotifyFDs(state, fds); err != nil {
		s.log.Warn("sd_notify failed", "state", state, "err", err)
	}
}

// sdNotifyFDs sends state to $NOTIFY_SOCKET with fds (SCM_RIGHTS), from
// an unbound datagram socket of its own.
func sdNotifyFDs(state string, fds []int) error {
	if len(fds) == 0 {
		_, err := sddaemon.SdNotify(false, state)
		return err
	}
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	syscall.ForkLock.RLock()
	s, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM, 0)
	if err == nil {
		syscall.CloseOnExec(s)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return err
	}
	defer syscall.Close(s)
	// syscall takes a leading @ as the abstract namespace.
	return syscall.Sendmsg(s, []byte(state), syscall.UnixRights(fds...), &syscall.SockaddrUnix{Name: path}, 0)
}

// unrestored is the ids of passed that no saved listener has.
func unrestored(passed map[string]*os.File, saved []json.RawMessage) []string {
	have := map[string]bool{}
	for _, raw := range saved {
		var r struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(raw, &r) == nil {
			have[r.ID] = true
		}
	}
	var out []string
	for id := range passed {
		if !have[id] {
			out = append(out, id)
		}
	}
	return out
}
