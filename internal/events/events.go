package events

import (
	"net/netip"
	"strconv"
	"time"
)

// Kind is the kind of an event.
type Kind uint8

// The kinds of event, in the order of the API's EventKind enum.
const (
	KindUnspecified Kind = iota
	KindListenerStarted
	KindConnectionOpened
	KindConnectionClosed
	KindConnectionRejected
	KindAcceptError
	KindLimitsChanged
	KindListenerClosed
	KindConnectionHalfClosed
	KindConnectionData
	KindConnectionQueued
	KindHandlerAttached
	KindHandlerDetached
	KindConnectionTaken
	KindFaultAdded
	KindFaultRemoved
	KindFaultApplied
	KindListenerReconciled // Detail.Reconcile says what
	kindCount
)

// Valid reports whether k names a real kind.
func (k Kind) Valid() bool { return k > KindUnspecified && k < kindCount }

// CloseReason says why a connection closed.
type CloseReason uint8

// Close reasons, in the order of the API's CloseReason enum.
const (
	CloseUnspecified CloseReason = iota
	ClosePeerClosed
	CloseReset
	CloseIdleTimeout
	CloseKicked
	CloseListenerClosed
	CloseDaemonShutdown
	CloseMaxLifetime
	CloseUpstreamFailed
	CloseNoHandler     // stream: no handler attached for the claim timeout
	CloseClaimTimeout  // stream: not taken within the claim timeout
	CloseHandlerGone   // stream: the handler's stream broke
	CloseHandlerReset  // stream: the handler reset the connection
	CloseHandlerClosed // handover: the handler said it closed the connection
	CloseFault         // a fault closed or reset it; Detail.Fault names it
)

// RejectReason says why a connection was rejected.
type RejectReason uint8

// Reject reasons, in the order of the API's RejectReason enum.
const (
	RejectUnspecified RejectReason = iota
	RejectMaxConnections
	RejectDeniedByACL
	RejectRateLimit
	RejectPerSourceLimit
	RejectDaemonLimit
	RejectQueueFull
	RejectQueueTimeout
	RejectListenerClosed // waited in the queue while the listener closed
	RejectKicked         // waited in the queue and was closed by CloseConnection
	RejectFault          // refused by a fault; Detail.Fault names it
	// NumRejectReasons is the number of reject reasons, for arrays indexed
	// by reason.
	NumRejectReasons
)

// Tuple is the five-tuple of a TCP connection.
type Tuple struct {
	Remote netip.AddrPort
	Local  netip.AddrPort
}

// Limits is a snapshot of a listener's limits. The zero Limits limits
// nothing: every zero field means "no limit".
type Limits struct {
	MaxConnections Cap // served connections; the zero Cap: unlimited
	Overflow       Overflow
	QueueLength    int           // under OverflowQueue; 0: DefaultQueueLength
	QueueTimeout   time.Duration // under OverflowQueue; 0: wait as long as it takes
	IdleTimeout    time.Duration
	MaxLifetime    time.Duration
	AcceptRate     float64 // connections a second; 0: no limit
	AcceptBurst    int     // 0: max(1, AcceptRate)
	PerSource      int64   // open or queued connections from one address; 0: unlimited
}

// DefaultQueueLength is the queue of a QUEUE listener that sets none.
const DefaultQueueLength = 128

// MaxQueueLength bounds a listener's queue.
const MaxQueueLength = 65535

// Queue returns the length of the queue in force: 0 unless the overflow
// policy is OverflowQueue.
func (l Limits) Queue() int {
	switch {
	case l.Overflow != OverflowQueue:
		return 0
	case l.QueueLength > 0:
		return l.QueueLength
	}
	return DefaultQueueLength
}

// Cap is an optional upper bound on a count. The zero Cap bounds nothing;
// AtMost(0) admits nothing.
type Cap struct {
	n   int64
	set bool
}

// AtMost is the bound of n.
func AtMost(n int64) Cap { return Cap{n: max(n, 0), set: true} }

// Bounded reports whether c bounds anything.
func (c Cap) Bounded() bool { return c.set }

// Max returns the bound, when there is one.
func (c Cap) Max() (int64, bool) { return c.n, c.set }

func (c Cap) String() string {
	if !c.set {
		return "unlimited"
	}
	return strconv.FormatInt(c.n, 10)
}

// Reached reports whether count is at (or over) the bound.
func (c Cap) Reached(count int64) bool { return c.set && count >= c.n }

// Overflow says what happens to a connection over MaxConnections.
type Overflow uint8

// Overflow policies, in the order of the API's OverflowPolicy enum (less
// its UNSPECIFIED).
const (
	// OverflowReject accepts and closes at once (Node's way).
	OverflowReject Overflow = iota
	// OverflowBacklog stops accepting: the kernel's listen backlog holds
	// the connection, unseen.
	OverflowBacklog
	// OverflowQueue accepts and holds the connection, unread and counted,
	// in the listener's queue until a slot frees.
	OverflowQueue
)

func (o Overflow) String() string {
	switch o {
	case OverflowBacklog:
		return "backlog"
	case OverflowQueue:
		return "queue"
	default:
		return "reject"
	}
}

// Detail holds the fields of the rarer kinds, so that the common connection
// events stay small in the history.
type Detail struct {
	Error     string        // accept error, close error
	Backoff   time.Duration // accept error
	Count     uint64        // accept errors folded into this event
	Limits    Limits        // limits changed
	Drained   uint64        // listener closed
	Destroyed uint64        // listener closed
	Address   string        // listener started
	Name      string        // listener started
	Data      []byte        // connection data, cut to the bus's data cap
	Outbound  bool          // connection data: written to the client
	Position  int           // connection queued: connections ahead of it
	Handler   string        // handler attached, detached; connection taken: the handler's id
	Fault     *FaultEvent   // fault events; closes and rejects by a fault
	Reconcile *Reconcile    // listener reconciled
}

// Reconcile is what a reconcile of the declared listeners did to one
// listener (Detail.Name names it), or that it failed (Detail.Error).
type Reconcile struct {
	Action string // create, update, rebind, close, failed
	Change string // what changed, for people
	Source string // where the desired state came from
}

// Event is one thing that happened on a listener. The bus sets Seq and Time.
type Event struct {
	Seq      uint64
	Time     int64 // unix nanoseconds
	Listener string
	Kind     Kind
	Close    CloseReason
	Reject   RejectReason
	Conn     uint64 // connection number within the listener; 0 if none
	Tuple    Tuple
	BytesIn  uint64
	BytesOut uint64
	Duration time.Duration
	Detail   *Detail
}

// ConnID is the daemon-wide id of the event's connection.
func (e *Event) ConnID() string {
	if e.Conn == 0 {
		return ""
	}
	return ConnID(e.Listener, e.Conn)
}
