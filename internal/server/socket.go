package server

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// staleProbe bounds the connect that tells a stale socket from a live one.
const staleProbe = 5 * time.Second

// checkStale tries to connect to the socket at path before it is removed:
// it refuses, naming what answers, when something does, or when it cannot
// tell. Only a refused connect (no one listens: its daemon died) makes it
// stale.
func checkStale(path string) error {
	c, err := net.DialTimeout("unix", path, staleProbe)
	switch {
	case err == nil:
		who := peerOf(c.(*net.UnixConn))
		c.Close()
		return fmt.Errorf("%s is in use: %s answers on it; not removing it (stop it, or choose another --socket)", path, who)
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, os.ErrNotExist):
		return nil
	case errors.Is(err, syscall.EAGAIN):
		return fmt.Errorf("%s is in use: a process listens on it, its queue full; not removing it (stop it, or choose another --socket)", path)
	default:
		return fmt.Errorf("%s exists and it cannot be told whether anything listens on it (%v); not removing it", path, err)
	}
}

// ownSocket is the API's unix listener. Closing it removes the socket file
// only if it is still the one it created (same device and inode): another
// daemon may have put its own in its place.
type ownSocket struct {
	*net.UnixListener
	path     string
	dev, ino uint64
	once     sync.Once
}

// claimSocket records the identity of the socket file ln created at path
// and turns off Go's own removal on close, which goes by the path alone.
func claimSocket(ln *net.UnixListener, path string) (*ownSocket, error) {
	ln.SetUnlinkOnClose(false)
	s := &ownSocket{UnixListener: ln, path: path}
	fi, err := os.Lstat(path)
	if err != nil {
		return s, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return s, fmt.Errorf("%s: no device and inode", path)
	}
	s.dev, s.ino = uint64(st.Dev), uint64(st.Ino)
	return s, nil
}

// Keep leaves the socket file in place at Close: an upgrade handed it to
// the new process.
func (s *ownSocket) Keep() { s.once.Do(func() {}) }

// Close closes the listener and removes the socket file if it is still
// this listener's.
func (s *ownSocket) Close() error {
	err := s.UnixListener.Close()
	s.once.Do(func() {
		if s.ino == 0 {
			return
		}
		if fi, err := os.Lstat(s.path); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && uint64(st.Dev) == s.dev && uint64(st.Ino) == s.ino {
				_ = os.Remove(s.path)
			}
		}
	})
	return err
}
