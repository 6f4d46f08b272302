package events

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// setWatchersLocked installs a new watcher list; b.wmu must be held.
func (b *Bus) setWatchersLocked(list []*Watcher) {
	var capb int
	for _, w := range list {
		capb = max(capb, w.dataMax)
	}
	b.dataCap.Store(int64(capb))
	b.watchers.Store(&list)
}

// Filter selects events. Empty fields match everything, except that
// connection data events go only to watchers that ask for them.
type Filter struct {
	Listeners []string
	Kinds     []Kind
	DataMax   int // > 0: include connection data events, cut to this many bytes
}

// Watch registers a watcher. With after nil it starts at the head; otherwise
// it replays the events after *after from the history first. It returns the
// head at the time of the call.
func (b *Bus) Watch(f Filter, after *uint64) (*Watcher, uint64, error) {
	w := &Watcher{bus: b, wake: make(chan struct{}, 1), done: make(chan struct{}), dataMax: min(f.DataMax, MaxDataBytes)}
	if len(f.Listeners) > 0 {
		w.listeners = make(map[string]struct{}, len(f.Listeners))
		for _, l := range f.Listeners {
			w.listeners[l] = struct{}{}
		}
	}
	if len(f.Kinds) > 0 {
		w.kinds = new([kindCount]bool)
		for _, k := range f.Kinds {
			if k.Valid() {
				w.kinds[k] = true
			}
		}
	}

	b.wmu.Lock()
	defer b.wmu.Unlock()
	b.mu.Lock()
	head, oldest, closed := b.head, b.oldest(), b.closed
	b.mu.Unlock()
	if closed {
		return nil, 0, ErrClosed
	}
	list := *b.watchers.Load()
	if open := int(b.slots.Load()); open >= b.maxWatchers {
		if cut := open - len(list); cut > 0 {
			return nil, 0, fmt.Errorf("%w: %d watching, %d of them cut and waiting on their clients to read or go away", ErrTooManyWatchers, open, cut)
		}
		return nil, 0, fmt.Errorf("%w: %d watching", ErrTooManyWatchers, open)
	}
	w.cursor.Store(head)
	if after != nil {
		if *after > head || *after+1 < oldest {
			return nil, 0, &RangeError{Asked: *after, Oldest: oldest, Newest: head}
		}
		w.cursor.Store(*after)
	}
	w.start = head
	next := make([]*Watcher, len(list), len(list)+1)
	copy(next, list)
	next = append(next, w)
	b.setWatchersLocked(next)
	b.slots.Add(1)
	return w, head, nil
}

// remove takes w off the list Publish wakes, and gives back its slot when
// release.
func (b *Bus) remove(w *Watcher, release bool) {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	if release {
		b.slots.Add(-1)
	}
	list := *b.watchers.Load()
	next := make([]*Watcher, 0, len(list))
	for _, o := range list {
		if o != w {
			next = append(next, o)
		}
	}
	b.setWatchersLocked(next)
}

// Watcher reads events from the bus history at its own pace. Its only
// buffer is the history: it is cut loose (ErrSlow) when it falls more than
// the bus's watcher lag behind the head.
type Watcher struct {
	bus       *Bus
	listeners map[string]struct{}
	kinds     *[kindCount]bool
	start     uint64 // head at registration: replay does not count as lag
	dataMax   int    // > 0: wants connection data events

	cursor atomic.Uint64 // last sequence scanned; written by the reader only

	wake  chan struct{}
	done  chan struct{}
	timer *time.Timer // linger timer, owned by the reader
	sent  time.Time   // when the last batch went out, owned by the reader
	once  sync.Once
	err   error
	close sync.Once // Close gives the slot back once
}

// notify wakes the watcher for the events up to seq, or cuts it when it
// is more than lag behind, or, while the history holds more than half its
// byte budget, more than half of the events it holds behind: the other
// half is the time a cut watcher has to resume in, whatever sizes the
// events have.
func (w *Watcher) notify(seq, lag uint64) {
	from := max(w.cursor.Load(), w.start)
	if behind := seq - from; seq > from && (behind > lag || w.pastHalf(seq, behind)) {
		w.cutSlow(behind)
		return
	}
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// pastHalf reports whether a watcher behind events short of seq is behind
// more than half of the events held, while they fill more than half the
// history's byte budget.
func (w *Watcher) pastHalf(seq, behind uint64) bool {
	if !w.bus.pressed.Load() {
		return false
	}
	tail := w.bus.tailSeq.Load()
	return seq >= tail && behind > (seq-tail+1)/2
}

func (w *Watcher) cut(err error) {
	w.once.Do(func() {
		w.err = err
		close(w.done)
	})
}

// cutSlow cuts the watcher loose for falling behind, behind events short
// of the head, and counts it unless it was already ended. It also leaves
// the list Publish wakes at once: a client that never reads may keep its
// stream's sender blocked for long, and it must not keep connection data
// recorded all that time. It keeps its slot until its reader closes it,
// so that such streams stay bounded by MaxWatchers.
func (w *Watcher) cutSlow(behind uint64) {
	cut := false
	w.once.Do(func() {
		cut = true
		w.err = ErrSlow
		w.bus.slowCuts.Add(1)
		w.bus.unsent.Add(behind)
		close(w.done)
	})
	if cut {
		w.bus.remove(w, false)
	}
}

func (w *Watcher) match(e *Event) bool {
	if e.Kind == KindConnectionData && w.dataMax == 0 {
		return false
	}
	if w.kinds != nil && !w.kinds[e.Kind] {
		return false
	}
	if w.listeners != nil {
		if _, ok := w.listeners[e.Listener]; !ok {
			return false
		}
	}
	return true
}

// Close unregisters the watcher and gives back its slot. It is safe to
// call more than once.
func (w *Watcher) Close() {
	w.cut(ErrClosed)
	w.close.Do(func() { w.bus.remove(w, true) })
}
