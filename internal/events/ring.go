package events

import (
	"time"
	"unsafe"
)

// Publish assigns e the next sequence and the current time, records it and
// wakes the watchers. It returns the sequence.
func (b *Bus) Publish(e Event) uint64 {
	seq := b.Record(e)
	b.Wake(seq)
	return seq
}

// Record is the first half of Publish: it assigns the sequence and records
// the event, without waking anyone. A caller that records under its own
// lock (to keep a snapshot consistent with the sequence) calls Wake after
// releasing it, so watchers are not woken into that lock.
func (b *Bus) Record(e Event) uint64 {
	b.mu.Lock()
	e.Time = time.Now().UnixNano()
	if b.diverted != nil { // handed over in an upgrade: see Divert
		b.diverted.pushLocked(e)
		seq := b.head
		b.mu.Unlock()
		return seq
	}
	seq := b.appendLocked(e)
	b.mu.Unlock()
	return seq
}

// appendLocked gives e the next sequence and holds it; b.mu must be held.
func (b *Bus) appendLocked(e Event) uint64 {
	b.head++
	seq := b.head
	for b.head-b.tail+1 > b.held { // the event count, before a slot is reused
		b.evictLocked()
	}
	e.Seq = seq
	*b.slot(seq) = e
	b.meta += metaBytes(&e)
	if e.Detail != nil && len(e.Detail.Data) > 0 {
		b.holdDataLocked(seq, e.Detail.Data)
	}
	for b.tail < b.head && b.meta+b.data.bytes > b.budget { // the bytes
		b.evictLocked()
	}
	b.tailSeq.Store(b.tail)
	b.pressed.Store(b.meta+b.data.bytes > b.budget/2)
	return seq
}

// The sizes an event is counted by in the history's byte budget: its ring
// slot, and its Detail with the strings it holds; connection data is
// counted apart, by its length (dataQueue).
var (
	eventSize  = int64(unsafe.Sizeof(Event{}))
	detailSize = int64(unsafe.Sizeof(Detail{}))
)

// metaBytes is what e costs the history besides its connection data.
func metaBytes(e *Event) int64 {
	n := eventSize
	if d := e.Detail; d != nil {
		n += detailSize + int64(len(d.Error)+len(d.Address)+len(d.Name))
		if r := d.Reconcile; r != nil {
			n += int64(unsafe.Sizeof(*r)) + int64(len(r.Action)+len(r.Change)+len(r.Source))
		}
	}
	return n
}

// evictLocked drops the oldest event held, and its data; b.mu must be
// held, and the history must hold more than one event or the head must be
// past it. Its slot is cleared, so that what it pointed to can go, and a
// chunk left holding nothing is let go too (one is kept for reuse).
func (b *Bus) evictLocked() {
	seq := b.tail
	i := seq % b.size
	if c := b.chunks[i/chunkSize]; c != nil {
		e := &c[i%chunkSize]
		if e.Seq == seq {
			b.meta -= metaBytes(e)
		}
		*e = Event{}
		// The chunk's last slot: nothing held is in it unless the head
		// came round into it.
		if i%chunkSize == chunkSize-1 && (b.head%b.size)/chunkSize != i/chunkSize {
			if b.spare == nil {
				b.spare = c
			}
			b.chunks[i/chunkSize] = nil
		}
	}
	b.tail++
	for b.data.len() > 0 && b.data.front().seq < b.tail {
		b.data.pop()
	}
}

// holdDataLocked accounts for the bytes of data in the event seq, then
// drops the bytes of the oldest data events until the history's data fits
// HistoryData; b.mu must be held. Bytes shared with the data event held
// just before (an echo's out event carries its in event's) count once,
// and leave with it. A
// dropped event keeps its slot and its length: its Detail is replaced by a
// copy without the bytes, so watchers that copied the event before hold
// what they copied.
func (b *Bus) holdDataLocked(seq uint64, data []byte) {
	n := len(data)
	if b.data.len() > 0 {
		last := b.data.back().seq
		if prev := b.slot(last); prev.Seq == last && prev.Detail != nil && len(prev.Detail.Data) > 0 && &prev.Detail.Data[0] == &data[0] {
			n = max(0, n-len(prev.Detail.Data))
		}
	}
	b.data.push(seq, n)
	for b.data.bytes > b.dataMax {
		b.dropData(b.data.pop().seq)
		// The events that only shared those bytes go with them.
		for b.data.len() > 0 && b.data.front().n == 0 {
			b.dropData(b.data.pop().seq)
		}
	}
}

// dropData takes the bytes out of the held event seq, unless its slot was
// overwritten already; b.mu must be held.
func (b *Bus) dropData(seq uint64) {
	if s := b.slot(seq); s.Seq == seq && s.Detail != nil {
		kept := *s.Detail
		kept.Data = nil
		s.Detail = &kept
	}
}

// dataQueue is a FIFO of the held events that carry data.
type dataQueue struct {
	q     []heldData
	first int
	bytes int64
}

type heldData struct {
	seq uint64
	n   int
}

func (q *dataQueue) push(seq uint64, n int) {
	if q.first > 0 && q.first >= len(q.q)/2 { // reclaim the popped half
		q.q = append(q.q[:0], q.q[q.first:]...)
		q.first = 0
	}
	q.q = append(q.q, heldData{seq, n})
	q.bytes += int64(n)
}

func (q *dataQueue) len() int        { return len(q.q) - q.first }
func (q *dataQueue) front() heldData { return q.q[q.first] }
func (q *dataQueue) back() heldData  { return q.q[len(q.q)-1] }

func (q *dataQueue) pop() heldData {
	d := q.q[q.first]
	q.first++
	q.bytes -= int64(d.n)
	return d
}

// slot returns the ring slot of seq; b.mu must be held.
func (b *Bus) slot(seq uint64) *Event {
	i := seq % b.size
	c := b.chunks[i/chunkSize]
	if c == nil {
		if c, b.spare = b.spare, nil; c == nil {
			c = make([]Event, chunkSize)
		}
		b.chunks[i/chunkSize] = c
	}
	return &c[i%chunkSize]
}

// oldest returns the oldest sequence held (1 before the first event);
// b.mu must be held.
func (b *Bus) oldest() uint64 { return b.tail }
