package listener

import (
	"encoding/json"
	"net/netip"
	"time"

	"github.com/listenerd/listenerd/internal/events"
)

// Limits bound what a listener accepts; see events.Limits. The zero Limits
// limits nothing.
type Limits = events.Limits

// Cap is an optional bound on a count; see events.Cap.
type Cap = events.Cap

// AtMost is the bound of n: AtMost(0) admits nothing.
func AtMost(n int64) Cap { return events.AtMost(n) }

// Overflow policies; see events.Overflow.
const (
	OverflowReject  = events.OverflowReject
	OverflowBacklog = events.OverflowBacklog
	OverflowQueue   = events.OverflowQueue
)

// HandlerSpec names the handler of a listener's connections, by its name in
// the manager's handler table, with that handler's options as JSON (the
// API's handler message in protobuf's JSON form, field names as in the
// .proto).
type HandlerSpec struct {
	Kind    string          // empty: discard
	Options json.RawMessage // nil: the kind's defaults
}

// Name is the handler kind's name, with the default filled in.
func (h HandlerSpec) Name() string {
	if h.Kind == "" {
		return DiscardName
	}
	return h.Kind
}

// Spec is what a listener was asked to be.
type Spec struct {
	Host           string // empty means 127.0.0.1
	Port           uint16
	Backlog        int // listen(2)'s backlog; 0 means the system default
	Limits         Limits
	AllowHalfOpen  bool
	PauseOnConnect bool
	Handler        HandlerSpec
	Allow          []netip.Prefix
	Deny           []netip.Prefix
	Nagle          bool          // leave Nagle's algorithm on (TCP_NODELAY off); Go's default is off
	KeepAlive      time.Duration // keepalive probe interval; 0: default (15s), < 0: off
	Faults         []Fault       // in force from the first accept; not saved (fault.go)
}

// DefaultHost is bound when a spec names no host.
const DefaultHost = "127.0.0.1"

// MaxBacklog is the largest listen backlog a spec may ask for.
const MaxBacklog = 65535

// State is the lifecycle state of a listener.
type State int32

// Listener states, in the order of the API's State enum.
const (
	StateUnspecified State = iota
	StateListening
	StateDraining
	StateClosed
	StateFailed
)

func (s State) String() string {
	switch s {
	case StateListening:
		return "listening"
	case StateDraining:
		return "draining"
	case StateClosed:
		return "closed"
	case StateFailed:
		return "failed"
	default:
		return "unspecified"
	}
}
