package listener

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
)

// saver writes the desired state with group commit. A change counts a new
// version under the manager's lock (stage), releases the lock, and waits
// until a save that covers it has finished (wait). Only one save runs at
// a time, done by one of the waiting callers; it takes the snapshot of
// the records then (snap, under the manager's lock, with the version it
// covers), so changes that arrive while a save is in flight share the
// next one, and a burst of changes costs a snapshot a save, not one each
// (2,000 creates at once staged 2,000 full snapshots before). The
// manager's lock is never held across the disk, so reads and the accept
// path never wait on an fsync.
type saver struct {
	p Persister
	// snap returns the records as they are and the newest version they
	// cover; it takes the manager's lock, then calls version.
	snap func() (uint64, []json.RawMessage, error)

	mu      sync.Mutex
	cond    sync.Cond
	staged  uint64 // newest version staged
	tried   uint64 // newest version a finished save covered
	good    uint64 // newest version a successful save covered
	err     error  // the last failed save's error
	writing bool   // a caller is saving now
}

func newSaver(p Persister, snap func() (uint64, []json.RawMessage, error)) *saver {
	s := &saver{p: p, snap: snap}
	s.cond.L = &s.mu
	return s
}

// stage counts a change and returns its version. The manager's lock must
// be held, so that a snapshot taken under it covers every version staged.
func (s *saver) stage() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.staged++
	return s.staged
}

// version is the newest version staged.
func (s *saver) version() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.staged
}

// wait returns once version v is on disk (a save of v or of a newer
// snapshot succeeded), or with the error of the save that covered it. It
// must be called without the manager's lock.
func (s *saver) wait(v uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.tried < v {
		if s.writing {
			s.cond.Wait()
			continue
		}
		s.writing = true
		s.mu.Unlock()
		ver, recs, err := s.snap()
		if err == nil {
			err = s.write(recs)
		}
		s.mu.Lock()
		s.writing = false
		s.tried = ver
		if err != nil {
			s.err = err
		} else {
			s.good = ver
		}
		s.cond.Broadcast()
	}
	if s.good < v && errors.Is(s.err, ErrShuttingDown) {
		return s.err // taken before the shutdown, and not saved: UNAVAILABLE
	}
	if s.good < v {
		return fmt.Errorf("%w: %v", ErrPersist, s.err)
	}
	return nil
}

// write calls the persister, turning a panic into an error so that the
// waiters are still woken and the daemon goes on.
func (s *saver) write(recs []json.RawMessage) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic in save: %v", r)
		}
	}()
	return s.p.Save(recs)
}
