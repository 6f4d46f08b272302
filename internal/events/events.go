package events

import (
	"net/netip"
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
	// NumRejectReasons is the number of reject reasons, for arrays indexed
	// by reason.
	NumRejectReasons
)

// Tuple is the five-tuple of a TCP connection.
type Tuple struct {
	Remote netip.AddrPort
	Local  netip.AddrPort
}

// Limits is a snapshot of a listener's limits. MaxConnections < 0 means
// unlimited.
type Limits struct {
	MaxConnections int64
	Backlog        bool // overflow policy: wait in the kernel backlog
	IdleTimeout    time.Duration
	MaxLifetime    time.Duration
	AcceptRate     float64 // connections a second; 0: no limit
	AcceptBurst    int     // 0: max(1, AcceptRate)
	PerSource      int64   // open connections from one address; 0: unlimited
}

// Unlimited reports whether no connection limit is set.
func (l Limits) Unlimited() bool { return l.MaxConnections < 0 }

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
