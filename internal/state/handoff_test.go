package state

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The lock handed over in an upgrade stays held after the old process
// closes its copy, and only the lock of the directory named is adopted.
func TestAdoptHandedLock(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := syscall.Dup(int(s.LockFile().Fd()))
	if err != nil {
		t.Fatal(err)
	}
	handed := os.NewFile(uintptr(fd), "lock")
	if _, err := Adopt(t.TempDir(), handed); err == nil {
		t.Fatal("adopted the lock of another directory")
	}
	n, err := Adopt(dir, handed)
	if err != nil {
		t.Fatal(err)
	}
	s.Close() // the old process lets go
	if _, err := Open(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("a third daemon opened the directory: %v", err)
	}
	if err := n.Save(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, FileName)); err != nil {
		t.Fatal(err)
	}
	n.Close()
	s2, err := Open(dir)
	if err != nil {
		t.Fatalf("after the new one closed: %v", err)
	}
	s2.Close()
}
