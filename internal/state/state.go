// Package state persists the daemon's desired state — each listener's id,
// name and spec — in a state directory, written atomically (temp file,
// fsync, rename, fsync of the directory), and guards the directory with a
// lock so that two daemons never share it.
package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Version is the state file format this daemon writes. Load also reads
// the older formats from MinVersion on, and says which it read: what the
// records of a version hold is their owner's to upgrade.
const Version = 2

// MinVersion is the oldest format Load reads.
const MinVersion = 1

// FileName is the state file inside the state directory.
const FileName = "listeners.json"

// ErrLocked: another daemon holds the directory.
var ErrLocked = errors.New("state directory in use by another listenerd")

// ErrCorrupt: the state file cannot be read as this version's format. The
// daemon refuses to start rather than start empty in silence.
var ErrCorrupt = errors.New("state file unreadable")

// File is the on-disk format.
type File struct {
	Version   int               `json:"version"`
	Listeners []json.RawMessage `json:"listeners"`
}

// Store reads and writes the state file of one directory.
type Store struct {
	dir  string
	lock *os.File
}

// Open creates dir (0700) if needed, takes its lock and removes the
// temporary files of a save a crash interrupted. It fails with ErrLocked
// when another process holds the lock.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory %s: %w", dir, err)
	}
	f, err := Lock(filepath.Join(dir, "lock"))
	if err != nil {
		return nil, fmt.Errorf("state directory %s: %w", dir, err)
	}
	// Holding the lock, no save is in flight: a temporary file left is
	// from a daemon killed while saving, and the state file is whole.
	if entries, err := os.ReadDir(dir); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), FileName+".tmp-") {
				_ = os.Remove(filepath.Join(dir, e.Name()))
			}
		}
	}
	return &Store{dir: dir, lock: f}, nil
}

// Lock takes an exclusive, non-blocking flock on path, creating it. The
// kernel drops the lock when the process dies, so a crashed daemon never
// leaves a stale one.
func Lock(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, ErrLocked
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

// Path is the state file's path.
func (s *Store) Path() string { return filepath.Join(s.dir, FileName) }

// Close releases the lock.
func (s *Store) Close() error { return s.lock.Close() }

// Load returns the saved listener records, each a JSON object for the
// caller to decode, and the format version they were saved in. A missing
// file is an empty state of the current version. A file that does not
// parse, or has a version this daemon does not read, fails with ErrCorrupt
// naming the file.
func (s *Store) Load() ([]json.RawMessage, int, error) {
	data, err := os.ReadFile(s.Path())
	if errors.Is(err, os.ErrNotExist) {
		return nil, Version, nil
	}
	if err != nil {
		return nil, 0, err
	}
	return Decode(s.Path(), data)
}

// Decode parses a state file's contents, returning its records and their
// version; name is used in errors.
func Decode(name string, data []byte) ([]json.RawMessage, int, error) {
	var f File
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, 0, fmt.Errorf("%w: %s: %v", ErrCorrupt, name, err)
	}
	// Anything but white space after the object is damage (dec.More
	// would not see a stray '}' or ']').
	if len(bytes.TrimSpace(data[dec.InputOffset():])) > 0 {
		return nil, 0, fmt.Errorf("%w: %s: trailing data", ErrCorrupt, name)
	}
	if f.Version < MinVersion || f.Version > Version {
		return nil, 0, fmt.Errorf("%w: %s: version %d, this listenerd reads versions %d-%d", ErrCorrupt, name, f.Version, MinVersion, Version)
	}
	return f.Listeners, f.Version, nil
}

// Save replaces the state file atomically: a reader (or a crash) sees the
// old file or the new one, never a mix.
func (s *Store) Save(records []json.RawMessage) error {
	if records == nil {
		records = []json.RawMessage{}
	}
	data, err := json.MarshalIndent(File{Version: Version, Listeners: records}, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.dir, FileName+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename this is a no-op
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), s.Path()); err != nil {
		return err
	}
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
