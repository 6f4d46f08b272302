package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// LockFile is the open lock of the store's directory, for an upgrade to
// hand to the new daemon process: the lock belongs to the open file, so
// the new process holds it from the moment it has its copy, and the old one
// lets go of nothing when it closes its own.
func (s *Store) LockFile() *os.File { return s.lock }

// Adopt opens the store of dir with lock, the lock file of dir that
// another process (the daemon an upgrade replaces) holds and handed over.
func Adopt(dir string, lock *os.File) (*Store, error) {
	if err := SameFile(lock, filepath.Join(dir, "lock")); err != nil {
		return nil, fmt.Errorf("state directory %s: %w", dir, err)
	}
	return &Store{dir: dir, lock: lock}, nil
}

// SameFile checks that f is the file at path: a lock handed over is the
// lock of the path this process was told to use.
func SameFile(f *os.File, path string) error {
	a, err := f.Stat()
	if err != nil {
		return err
	}
	b, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !os.SameFile(a, b) {
		return errors.New("the lock handed over is not " + path)
	}
	// Held, as it must be: a lock of ours is taken again without blocking.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("lock handed over: %w", err)
	}
	return nil
}
