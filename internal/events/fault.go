package events

import (
	"net/netip"
	"time"
)

// FaultKind is what a fault does; the order is the API's FaultKind enum.
type FaultKind uint8

// Fault kinds. The first eight act on the byte path of a connection, the
// last two on its accept.
const (
	FaultUnspecified FaultKind = iota
	FaultLatency               // delay each chunk by Latency ± Jitter
	FaultBandwidth             // a token bucket of Rate bytes a second, Burst deep
	FaultSlicer                // cut chunks into slices of SliceSize ± SliceVariation, Delay apart
	FaultSlowClose             // delay the half-close (FIN) by Delay
	FaultTimeout               // pass nothing, hold the connection; close it after Delay if set
	FaultBlackhole             // drop every byte; the half-close passes
	FaultReset                 // RST after Delay, or after Bytes, or at once
	FaultLimitData             // pass exactly Bytes, then close
	FaultRefuse                // accept side: answer RST
	FaultDelayAccept           // accept side: hold the connection Delay before admitting it
	NumFaultKinds
)

var faultKindNames = [NumFaultKinds]string{"", "latency", "bandwidth", "slicer", "slow_close", "timeout",
	"blackhole", "reset", "limit_data", "refuse", "delay_accept"}

func (k FaultKind) String() string {
	if k < NumFaultKinds {
		return faultKindNames[k]
	}
	return "unknown"
}

// ParseFaultKind reads a kind's name (latency, slow_close, …).
func ParseFaultKind(s string) (FaultKind, bool) {
	for k := FaultLatency; k < NumFaultKinds; k++ {
		if faultKindNames[k] == s {
			return k, true
		}
	}
	return FaultUnspecified, false
}

// AcceptSide reports whether the kind acts on the accept, not the bytes.
func (k FaultKind) AcceptSide() bool { return k == FaultRefuse || k == FaultDelayAccept }

// FaultDirection is the way of the bytes a fault acts on.
type FaultDirection uint8

// Fault directions, in the order of the API's FaultDirection enum.
const (
	FaultBoth FaultDirection = iota // both ways (the default)
	FaultIn                         // from the client toward the handler (or upstream)
	FaultOut                        // from the handler toward the client
)

func (d FaultDirection) String() string {
	switch d {
	case FaultIn:
		return "in"
	case FaultOut:
		return "out"
	}
	return "both"
}

// Fault is one fault of a listener: its name (unique in the listener),
// kind, direction, probability, scope, expiry and the parameters of its
// kind. The zero value of a parameter means the kind's default.
type Fault struct {
	Name        string
	Kind        FaultKind
	Direction   FaultDirection
	Probability float64 // 0-1: the share of connections it applies to

	// Scope: every connection when all are empty; each set one narrows it.
	NewOnly bool           // only connections opened after it was added
	Conns   []string       // only these connection ids
	Sources []netip.Prefix // only connections from these sources

	Expires time.Time // removed then; zero: never

	Latency        time.Duration // latency
	Jitter         time.Duration // latency: ± this, uniform
	Rate           int64         // bandwidth: bytes a second
	Burst          int64         // bandwidth: bucket depth in bytes; 0: Rate/50, at least 1
	SliceSize      int           // slicer: average slice in bytes
	SliceVariation int           // slicer: ± this
	Delay          time.Duration // slicer (between slices), slow_close, timeout (0: never close), reset, delay_accept
	Bytes          int64         // limit_data (exactly this many pass), reset (after this many)
}

// FaultEvent is what a fault event carries: the fault (whole for
// fault_added, its name and kind otherwise), the draw of the connection it
// applied to, and whether a removal was its expiry.
type FaultEvent struct {
	Fault   Fault
	Draw    float64 // fault_applied: the connection's draw
	Expired bool    // fault_removed: by its expiry
}
