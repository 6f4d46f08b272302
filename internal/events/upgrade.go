package events

import (
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"time"
)

// An upgrade hands this bus's history to the bus of a new daemon process,
// which goes on with the same boot id and the next sequence: a watcher
// resumes on the new process with after_sequence as if nothing happened.
//
// On the old process: Snapshot copies the history while events go on, and
// Divert copies what came after the snapshot and, in the same step under
// Bus.mu, sends every later event to a Diversion instead of the history.
// On the new process: Resume takes the history (in one or more parts) before
// anything is published, and Import publishes the events the old process
// diverted, keeping their time.

// Snapshot returns a copy of the events held, oldest first, and the head.
func (b *Bus) Snapshot() ([]Event, uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.copyLocked(b.oldest() - 1), b.head
}

// copyLocked copies the events after seq after; b.mu must be held.
func (b *Bus) copyLocked(after uint64) []Event {
	if after >= b.head {
		return nil
	}
	out := make([]Event, 0, b.head-after)
	for seq := after + 1; seq <= b.head; seq++ {
		out = append(out, *b.slot(seq))
	}
	return out
}

// Diversion receives the events recorded on a bus after Divert: they have
// their time but no sequence, which the bus they are imported into gives.
type Diversion struct {
	b     *Bus
	q     []Event // under b.mu
	ended bool    // under b.mu
	wake  chan struct{}
}

// Divert stops this bus's history: it returns the events after seq after
// (they are still held), the head, and the Diversion that receives every
// event recorded from now on. Watchers see nothing more; Close them. A
// sequence after that is no longer held is a *RangeError.
func (b *Bus) Divert(after uint64) ([]Event, uint64, *Diversion, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.diverted != nil {
		return nil, 0, nil, errors.New("event history already diverted")
	}
	if after > b.head || after+1 < b.oldest() {
		return nil, 0, nil, &RangeError{Asked: after, Oldest: b.oldest(), Newest: b.head}
	}
	b.diverted = &Diversion{b: b, wake: make(chan struct{}, 1)}
	return b.copyLocked(after), b.head, b.diverted, nil
}

func (d *Diversion) pushLocked(e Event) {
	if d.ended {
		return
	}
	d.q = append(d.q, e)
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Wake is signalled when Take has something new to return.
func (d *Diversion) Wake() <-chan struct{} { return d.wake }

// Take returns the events diverted since its last call, in the order they
// were recorded, and whether the diversion has ended (End) and nothing is
// left after these.
func (d *Diversion) Take() ([]Event, bool) {
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	q := d.q
	d.q = nil
	return q, d.ended
}

// End stops the diversion: events recorded from now on are dropped, and
// Take reports the end once it has returned the rest.
func (d *Diversion) End() {
	d.b.mu.Lock()
	d.ended = true
	d.b.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Resume makes this bus go on with another bus's history: its boot id, and
// the events evs that end at sequence head. It may be called again with
// the events that follow (Divert's), and only before anything is
// published on this bus or a watcher registers. The boot id is read
// without a lock: call Resume before the bus is shared with other
// goroutines.
func (b *Bus) Resume(bootID string, evs []Event, head uint64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.diverted != nil || b.closed {
		return errors.New("event bus not fresh")
	}
	if b.floor == 0 { // the first part
		if b.head != 0 {
			return fmt.Errorf("event bus has published %d events already", b.head)
		}
		if bootID == "" {
			return errors.New("no boot id")
		}
		b.bootID = bootID
		first := head + 1
		if len(evs) > 0 {
			first = evs[0].Seq
		}
		if first == 0 || first > head+1 {
			return fmt.Errorf("history starts at %d, after its head %d", first, head)
		}
		b.head, b.floor, b.tail = first-1, first, first
	} else if bootID != b.bootID {
		return fmt.Errorf("boot id %q, resuming %q", bootID, b.bootID)
	}
	for _, e := range evs {
		if e.Seq != b.head+1 {
			return fmt.Errorf("event %d after %d: the history has a gap", e.Seq, b.head)
		}
		b.appendLocked(e)
	}
	if b.head != head {
		return fmt.Errorf("history ends at %d, head is %d", b.head, head)
	}
	return nil
}

// Import publishes e, diverted from the bus whose history this one
// resumed: it gets the next sequence and keeps its time.
func (b *Bus) Import(e Event) uint64 {
	b.mu.Lock()
	if e.Time == 0 {
		e.Time = time.Now().UnixNano()
	}
	seq := b.appendLocked(e)
	b.mu.Unlock()
	b.Wake(seq)
	return seq
}

// WriteEvents writes evs to w in the format ReadEvents reads: gob, which
// carries the fields both processes know and skips the others, so that
// the daemons of two versions understand each other.
func WriteEvents(w io.Writer, evs []Event) error {
	return gob.NewEncoder(w).Encode(evs)
}

// ReadEvents reads what WriteEvents wrote.
func ReadEvents(r io.Reader) ([]Event, error) {
	var evs []Event
	err := gob.NewDecoder(r).Decode(&evs)
	return evs, err
}

// MarshalBinary encodes c (for gob, in an upgrade).
func (c Cap) MarshalBinary() ([]byte, error) {
	b := binary.AppendVarint(nil, c.n)
	if c.set {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	return b, nil
}

// UnmarshalBinary decodes what MarshalBinary wrote.
func (c *Cap) UnmarshalBinary(b []byte) error {
	n, k := binary.Varint(b)
	if k <= 0 || len(b) != k+1 {
		return errors.New("bad cap")
	}
	c.n, c.set = n, b[k] == 1
	return nil
}

// Since copies up to max events after seq after from the history, oldest
// first, whether or not the bus is closed: for a reader that must take
// the last events of a shutdown, after Close ended the watchers. A
// sequence no longer held is a *RangeError.
func (b *Bus) Since(after uint64, max int) ([]Event, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if after > b.head || after+1 < b.oldest() {
		return nil, &RangeError{Asked: after, Oldest: b.oldest(), Newest: b.head}
	}
	if n := uint64(max); n > 0 && b.head-after > n {
		out := make([]Event, 0, n)
		for seq := after + 1; seq <= after+n; seq++ {
			out = append(out, *b.slot(seq))
		}
		return out, nil
	}
	return b.copyLocked(after), nil
}
