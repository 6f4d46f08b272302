package listener

import (
	"encoding/json"
	"fmt"
	"sync"
)

// saver writes the desired state with group commit. A change takes a
// snapshot of the records under the manager's lock (stage), releases the
// lock, and waits until a save that includes it has finished (wait). Only
// one save runs at a time, done by one of the waiting callers; it writes
// the newest snapshot, so changes that arrive while a save is in flight
// share the next one. The manager's lock is never held across the disk,
// so reads and the accept path never wait on an fsync.
type saver struct {
	p Persister

	mu      sync.Mutex
	cond    sync.Cond
	staged  uint64            // version of the newest snapshot
	recs    []json.RawMessage // the newest snapshot, unsaved
	tried   uint64            // newest version a finished save covered
	good    uint64            // newest version a successful save covered
	err     error             // the last failed save's error
	writing bool              // a caller is saving now
}

func newSaver(p Persister) *saver {
	s := &saver{p: p}
	s.cond.L = &s.mu
	return s
}

// stage records a snapshot and returns its version. The manager's lock
// must be held, so that versions follow the order of the changes.
func (s *saver) stage(recs []json.RawMessage) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.staged++
	s.recs = recs
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
		ver, recs := s.staged, s.recs
		s.mu.Unlock()
		err := s.write(recs)
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
