// Package fleet publishes the daemon's events to NATS JetStream, so that
// one stream holds the events of every host, and names what readers of
// that stream rely on: the subjects (wire.go: Subject, GapSubject,
// HostSubjects), the message ids (MsgID: boot id and sequence, which
// JetStream's duplicate window turns into exactly-once storage across
// reconnects) and the gap records (Gap). conn.go is how the daemon and
// ctl reach NATS (ConnConfig: URL, credentials, TLS off loopback).
//
// # The publisher
//
// publisher.go: a Publisher is one more watcher of the bus's history
// (events.Bus.Watch), so the listeners never wait on it: when it falls
// behind, the bus cuts it like any watcher. Its run goroutine reads
// batches and publishes each batch's events of one subject together, as
// one core NATS message (up to Options.Pack events, one JSON a line: see
// Events) with a reply subject of its own (the flight's inbox and the
// publish's number), at most Options.MaxPending awaiting their answers.
// The stream's acks come back to the flight's inbox subscription, whose
// goroutine advances Acked, the last sequence up to which everything is
// in the stream, to the end of each batch whose messages are all
// acknowledged. A message left unanswered (or refused) is kept and sent
// again as it was, so that its id always stands for the same events. The first failure (an error answer, no answer
// within AckTimeout, a disconnect) ends the flight; the run goroutine
// takes the answers still in flight (events acknowledged behind the failed
// one are not published again), then watches again from Acked once NATS
// answers, and if the history no
// longer holds the next event, publishes one gap record and goes on from
// the oldest held. At shutdown, after Bus.Close ended its watcher, Stop
// makes it publish what the history holds past Acked (events.Bus.Since),
// within a bound.
//
// Goroutines: run (one per Publisher, ended by Stop), and for each flight
// a watchdog (the ack timeout and the connection's status) and the inbox
// subscription's, both ended by flight.end, which run calls before it
// starts another flight or returns. Acked is written by the inbox
// subscription's goroutine and by send while a flight is under way, and by
// run only between flights (gap, locate).
//
// # The desired listeners
//
// desired.go: a Desired watches its host's desired keys in the bucket
// (kv.go), reconciles them (declare.ReconcileSet) and writes each
// listener's status back. Its Run goroutine does all the watching,
// reconciling and writing; one more goroutine, which Run joins, polls a
// watcher of the bus's listener-level events every 50 ms (waiting on it
// would wake it at every connection's events) and tells Run that listeners changed
// (a poke and the ids of listeners closed, under a mutex). A third, also
// joined by Run, writes the host key (heartbeat: HostKey, Host) at start,
// at each reconnect and every Heartbeat, and once more, stopped, when
// Run's context ends; ctl reads it with Liveness.
package fleet
