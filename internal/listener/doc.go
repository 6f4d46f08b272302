// Package listener is the listener engine: it binds TCP listeners, accepts
// their connections, enforces their limits, hands each connection to its
// listener's Handler and reports what happens to the event bus. It knows
// nothing of gRPC.
//
// # Files
//
//   - manager.go: the table of listeners (create, find, change, close,
//     shutdown) and the daemon-wide caps (connections, the descriptor
//     budget: takeFDs, giveFDs); restore.go: restore and rebind;
//     persist.go: saved records only; saver.go: one save for changes
//     arriving together; handoff.go: an upgrade's hand-off of the
//     listening sockets to a new process (the old one drains, the new one
//     adopts them).
//   - listener.go: one listener, its counters, drain and close;
//     accept.go: the accept loop and admission (ACL, rate, limits);
//     queue.go: the QUEUE overflow policy.
//   - conn.go: a connection's life (pause, serve, close, its reason);
//     halfopen_*.go: a half-open one waits on its socket for its peer's
//     loss;
//     bytes.go and splice_*.go: the fast byte paths; filter.go: the
//     filters a byte path admits; fault.go: a listener's faults, the
//     filters they make and their draws (the accept side's in accept.go).
//   - handler.go: the Handler interface, the handler table and what a
//     handler gets of its connection; discard.go, echo.go, forward.go: one
//     file a handler; forwardloop.go: the refusal of forward dials that
//     lead back into this daemon's own forward listeners.
//   - validate.go, resolve.go, bind.go: checking a spec, resolving its
//     host, binding its socket.
//
// # Goroutines
//
// A Manager owns, and Shutdown waits for, each listener's accept loop and
// each draining listener's drain. The accept loop is the only goroutine
// that accepts; it admits, queues or rejects each connection itself and
// never blocks on one, except under the BACKLOG policy, where it waits for
// a slot instead of accepting. Each served connection has one goroutine,
// its own (Conn.serve, then its handler's Serve), joined by its listener's
// close; forward adds a goroutine for the upstream-to-client direction, one
// that cancels its dial on a kill, and with an idle timeout one that
// watches for it, all ended before Serve returns. Timers (time.AfterFunc)
// close connections at their lifetime or idle bound and reject queued ones
// at their queue timeout; a queued connection has no goroutine until it is
// served. The saver has no goroutine: one of the callers waiting on a save
// writes it.
//
// # Locks
//
// Manager.mu (the table) is taken before Listener.mu, never after.
// Listener.mu guards a listener's connections, queue, per-source counts
// and the counters that are not atomic; every change of the served count
// upwards happens under it (register, promoteLocked), so the served count
// never passes max_connections. The event bus's locks come after both:
// events are recorded under Listener.mu so that a snapshot and the
// sequence it reflects agree. Conn.mu (what closing a connection touches)
// and the saver's lock are taken with no other engine lock held, except
// that the saver's is taken under Manager.mu to stage a save. No lock is
// held across a socket read, write or dial.
package listener
