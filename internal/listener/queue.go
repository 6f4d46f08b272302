package listener

import (
	"time"

	"github.com/listenerd/listenerd/internal/events"
)

// The QUEUE overflow policy: a connection over max_connections is accepted
// and held, unread, in the listener's queue; as served connections end
// (or the limit rises) the oldest waiting one is served. Everything here
// runs under the listener's lock, l.mu, so that a slot freed goes to the
// queue's head before any new arrival can take it.

// connQueue is a first-in, first-out queue of waiting connections. A
// connection that leaves it early (a timeout, a kick) is only marked and
// skipped when it reaches the front, so every removal is O(1).
type connQueue struct {
	q       []*Conn
	head    int
	waiting map[uint64]*Conn // by connection number: still in the queue
}

func (q *connQueue) len() int { return len(q.waiting) }

func (q *connQueue) push(c *Conn) {
	if q.waiting == nil {
		q.waiting = map[uint64]*Conn{}
	}
	q.q = append(q.q, c)
	q.waiting[c.n] = c
}

// pop returns the oldest waiting connection, or nil.
func (q *connQueue) pop() *Conn {
	for q.head < len(q.q) {
		c := q.q[q.head]
		q.q[q.head] = nil
		q.head++
		if q.waiting[c.n] == c {
			delete(q.waiting, c.n)
			q.compact()
			return c
		}
	}
	q.compact()
	return nil
}

// remove takes c out of the queue, reporting whether it was there.
func (q *connQueue) remove(c *Conn) bool {
	if q.waiting[c.n] != c {
		return false
	}
	delete(q.waiting, c.n)
	return true
}

func (q *connQueue) compact() {
	if q.head > 64 && q.head*2 > len(q.q) {
		q.q = append(q.q[:0], q.q[q.head:]...)
		q.head = 0
	}
	if len(q.waiting) == 0 {
		q.q, q.head = q.q[:0], 0
	}
}

// enqueueLocked queues c, arming its timeout, and records its queued
// event; l.mu must be held. The connection holds a count of conWG until
// it is served or rejected.
func (l *Listener) enqueueLocked(c *Conn, timeout time.Duration) uint64 {
	pos := l.queue.len()
	l.queue.push(c)
	l.conWG.Add(1)
	if timeout > 0 {
		c.queueTimer = time.AfterFunc(timeout, func() { l.dequeue(c, events.RejectQueueTimeout) })
	}
	return l.bus.Record(events.Event{Listener: l.id, Kind: events.KindConnectionQueued, Conn: c.n, Tuple: c.tuple,
		Detail: &events.Detail{Position: pos}})
}

// promoteLocked serves waiting connections while the limit allows; l.mu
// must be held. It returns the connections to start (after the lock is
// let go, with l.start) and the sequence to wake the bus with.
func (l *Listener) promoteLocked() ([]*Conn, uint64) {
	if l.queue.len() == 0 || l.stopped {
		return nil, 0
	}
	lim := l.limits.Load()
	var out []*Conn
	var seq uint64
	for !lim.MaxConnections.Reached(l.active.Load()) {
		c := l.queue.pop()
		if c == nil {
			break
		}
		if c.queueTimer != nil {
			c.queueTimer.Stop() // a timeout already firing finds it gone
		}
		c.queueWait = time.Since(c.opened)
		seq = l.openLocked(c)
		out = append(out, c)
	}
	return out, seq
}

// startPromoted starts what promoteLocked took; l.mu must not be held. A
// promoted connection already holds its count of conWG.
func (l *Listener) startPromoted(cs []*Conn, seq uint64) {
	if seq != 0 {
		l.bus.Wake(seq)
	}
	for _, c := range cs {
		l.host.queueLeft(l.id, c.queueWait)
		l.run(c)
	}
}

// dequeue rejects a waiting connection with reason, if it is still
// waiting.
func (l *Listener) dequeue(c *Conn, reason events.RejectReason) bool {
	l.mu.Lock()
	if !l.queue.remove(c) {
		l.mu.Unlock()
		return false
	}
	l.unqueuedLocked(c)
	l.mu.Unlock()
	l.reject(c, reason)
	return true
}

// unqueuedLocked uncounts a connection that left the queue unserved; l.mu
// must be held.
func (l *Listener) unqueuedLocked(c *Conn) {
	if c.queueTimer != nil {
		c.queueTimer.Stop()
	}
	src := c.tuple.Remote.Addr()
	if l.perSource[src]--; l.perSource[src] <= 0 {
		delete(l.perSource, src)
	}
}

// reject closes a connection that left the queue unserved and reports it.
func (l *Listener) reject(c *Conn, reason events.RejectReason) {
	defer l.conWG.Done()
	_ = c.c.Close()
	l.host.release()
	l.rejected[reason].Add(1)
	wait := time.Since(c.opened)
	l.bus.Publish(events.Event{Listener: l.id, Kind: events.KindConnectionRejected, Reject: reason, Conn: c.n,
		Tuple: c.tuple, Duration: wait})
	l.host.queueLeft(l.id, wait)
}

// rejectQueued rejects every waiting connection with reason (the listener
// is closing).
func (l *Listener) rejectQueued(reason events.RejectReason) {
	l.mu.Lock()
	var all []*Conn
	for c := l.queue.pop(); c != nil; c = l.queue.pop() {
		l.unqueuedLocked(c)
		all = append(all, c)
	}
	l.mu.Unlock()
	for _, c := range all {
		l.reject(c, reason)
	}
}
