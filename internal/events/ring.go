package events

import "time"

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
	e.Seq = seq
	*b.slot(seq) = e
	if e.Detail != nil && len(e.Detail.Data) > 0 {
		b.holdDataLocked(seq, e.Detail.Data)
	}
	return seq
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
	oldest := b.oldest()
	for b.data.bytes > b.dataMax || (b.data.len() > 0 && b.data.front().seq < oldest) {
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
		c = make([]Event, chunkSize)
		b.chunks[i/chunkSize] = c
	}
	return &c[i%chunkSize]
}

// oldest returns the oldest sequence held; b.mu must be held.
func (b *Bus) oldest() uint64 {
	if b.head < b.held {
		return max(1, b.floor)
	}
	return max(b.head-b.held+1, b.floor)
}
