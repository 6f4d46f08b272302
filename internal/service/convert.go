package service

import (
	"fmt"
	"math"
	"net/netip"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
)

// Bounds on request fields: requests are small, and nothing a request says
// is allocated up front.
const (
	maxCIDRs     = 1024
	maxIDLen     = 128
	maxWatchRefs = 256
	maxHostLen   = 253
	// maxAcceptRate bounds accept_rate and accept_burst.
	maxAcceptRate = 1_000_000
)

// duration checks an optional duration field.
func duration(field string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, listener.Invalid(field, "%v", err)
	}
	if d.GetSeconds() < 0 || d.GetNanos() < 0 {
		return 0, listener.Invalid(field, "must not be negative, got %s", durationText(d))
	}
	if !fitsDuration(d) {
		// AsDuration would saturate; the spec must stay what was asked.
		return 0, listener.Invalid(field, "%s is out of range: at most %v", durationText(d), time.Duration(math.MaxInt64))
	}
	return d.AsDuration(), nil
}

// fitsDuration reports whether a valid d fits a time.Duration.
func fitsDuration(d *durationpb.Duration) bool {
	const maxSeconds = math.MaxInt64 / int64(time.Second)
	s, n := d.GetSeconds(), int64(d.GetNanos())
	switch {
	case s > maxSeconds || s < -maxSeconds:
		return false
	case s == maxSeconds:
		return n <= math.MaxInt64%int64(time.Second)
	case s == -maxSeconds:
		return n >= math.MinInt64%int64(time.Second)
	}
	return true
}

// durationText writes a valid d as asked, also where time.Duration would
// saturate.
func durationText(d *durationpb.Duration) string {
	if fitsDuration(d) {
		return d.AsDuration().String()
	}
	s, n := d.GetSeconds(), int64(d.GetNanos())
	sign := ""
	if s < 0 || n < 0 {
		sign, s, n = "-", -s, -n
	}
	if n == 0 {
		return fmt.Sprintf("%s%ds", sign, s)
	}
	return fmt.Sprintf("%s%d.%09ds", sign, s, n)
}

func limitsFromProto(p *listenerdv1.Limits) (listener.Limits, error) {
	var lim listener.Limits
	if p == nil {
		return lim, nil
	}
	if p.MaxConnections != nil {
		lim.MaxConnections = listener.AtMost(int64(p.GetMaxConnections()))
	}
	switch p.GetOverflow() {
	case listenerdv1.OverflowPolicy_OVERFLOW_POLICY_UNSPECIFIED, listenerdv1.OverflowPolicy_OVERFLOW_POLICY_REJECT:
	case listenerdv1.OverflowPolicy_OVERFLOW_POLICY_BACKLOG:
		lim.Overflow = listener.OverflowBacklog
	case listenerdv1.OverflowPolicy_OVERFLOW_POLICY_QUEUE:
		lim.Overflow = listener.OverflowQueue
	default:
		return lim, listener.Invalid("spec.limits.overflow", "unknown policy %d", p.GetOverflow())
	}
	if n := p.GetQueueLength(); n > events.MaxQueueLength {
		return lim, listener.Invalid("spec.limits.queue_length", "%d is out of range 1-%d (0: %d)", n, events.MaxQueueLength, events.DefaultQueueLength)
	}
	lim.QueueLength = int(p.GetQueueLength())
	var err error
	if lim.QueueTimeout, err = duration("spec.limits.queue_timeout", p.GetQueueTimeout()); err != nil {
		return lim, err
	}
	if lim.IdleTimeout, err = duration("spec.limits.idle_timeout", p.GetIdleTimeout()); err != nil {
		return lim, err
	}
	if lim.MaxLifetime, err = duration("spec.limits.max_lifetime", p.GetMaxLifetime()); err != nil {
		return lim, err
	}
	if r := p.GetAcceptRate(); r < 0 || r > maxAcceptRate || r != r {
		return lim, listener.Invalid("spec.limits.accept_rate", "%v is out of range 0-%d", r, maxAcceptRate)
	}
	lim.AcceptRate = p.GetAcceptRate()
	if p.GetAcceptBurst() > maxAcceptRate {
		return lim, listener.Invalid("spec.limits.accept_burst", "%d is out of range 0-%d", p.GetAcceptBurst(), maxAcceptRate)
	}
	lim.AcceptBurst = int(p.GetAcceptBurst())
	if p.MaxConnectionsPerSource != nil {
		if p.GetMaxConnectionsPerSource() == 0 {
			return lim, listener.Invalid("spec.limits.max_connections_per_source", "must be at least 1 (unset means unlimited)")
		}
		lim.PerSource = int64(p.GetMaxConnectionsPerSource())
	}
	return lim, nil
}

func cidrs(field string, in []string) ([]netip.Prefix, error) {
	if len(in) > maxCIDRs {
		return nil, listener.Invalid(field, "%d entries, at most %d", len(in), maxCIDRs)
	}
	var out []netip.Prefix
	for i, s := range in {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			// A bare address means that one host.
			a, aerr := netip.ParseAddr(s)
			if aerr != nil || a.Zone() != "" {
				return nil, listener.Invalid(fmt.Sprintf("%s[%d]", field, i), "%q is not a CIDR (%s)", listener.Clip(s), listener.Clip(err.Error()))
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if err := listener.CheckNetwork(p); err != nil {
			return nil, listener.Invalid(fmt.Sprintf("%s[%d]", field, i), "%v", err)
		}
		// Sources are unmapped before matching, so an IPv4 prefix also
		// covers IPv4-mapped IPv6 peers of a dual-stack listener.
		out = append(out, p)
	}
	return out, nil
}

// specFromProto validates and converts a requested spec. Every failure names
// its field.
func specFromProto(p *listenerdv1.ListenerSpec) (listener.Spec, error) {
	var s listener.Spec
	if p == nil {
		return s, listener.Invalid("spec", "required")
	}
	if len(p.GetHost()) > maxHostLen {
		return s, listener.Invalid("spec.host", "longer than %d characters", maxHostLen)
	}
	s.Host = p.GetHost()
	if p.GetPort() > 65535 {
		return s, listener.Invalid("spec.port", "%d is out of range 0-65535", p.GetPort())
	}
	s.Port = uint16(p.GetPort())
	if p.Backlog != nil {
		if p.GetBacklog() == 0 || p.GetBacklog() > listener.MaxBacklog {
			return s, listener.Invalid("spec.backlog", "%d is out of range 1-%d", p.GetBacklog(), listener.MaxBacklog)
		}
		s.Backlog = int(p.GetBacklog())
	}
	var err error
	if s.Limits, err = limitsFromProto(p.GetLimits()); err != nil {
		return s, err
	}
	s.AllowHalfOpen = p.GetAllowHalfOpen()
	s.PauseOnConnect = p.GetPauseOnConnect()
	if s.Handler, err = handlerFromProto(p.GetHandler()); err != nil {
		return s, err
	}
	if s.Allow, err = cidrs("spec.allow_cidrs", p.GetAllowCidrs()); err != nil {
		return s, err
	}
	if s.Deny, err = cidrs("spec.deny_cidrs", p.GetDenyCidrs()); err != nil {
		return s, err
	}
	s.Nagle = p.NoDelay != nil && !p.GetNoDelay()
	if s.Faults, err = faultsFromProto(p.GetFaults()); err != nil {
		return s, err
	}
	if p.GetKeepalive() != nil {
		if s.KeepAlive, err = duration("spec.keepalive", p.GetKeepalive()); err != nil {
			return s, err
		}
		if s.KeepAlive == 0 {
			s.KeepAlive = -1 // zero turns keepalive off
		}
	}
	return s, nil
}

func limitsToProto(l listener.Limits) *listenerdv1.Limits {
	p := &listenerdv1.Limits{Overflow: listenerdv1.OverflowPolicy_OVERFLOW_POLICY_REJECT}
	if n, ok := l.MaxConnections.Max(); ok {
		n := uint32(min(n, 1<<32-1))
		p.MaxConnections = &n
	}
	switch l.Overflow {
	case listener.OverflowBacklog:
		p.Overflow = listenerdv1.OverflowPolicy_OVERFLOW_POLICY_BACKLOG
	case listener.OverflowQueue:
		p.Overflow = listenerdv1.OverflowPolicy_OVERFLOW_POLICY_QUEUE
		p.QueueLength = uint32(l.Queue()) // the length in force, the default filled in
	}
	if l.QueueTimeout > 0 {
		p.QueueTimeout = durationpb.New(l.QueueTimeout)
	}
	if l.IdleTimeout > 0 {
		p.IdleTimeout = durationpb.New(l.IdleTimeout)
	}
	if l.MaxLifetime > 0 {
		p.MaxLifetime = durationpb.New(l.MaxLifetime)
	}
	p.AcceptRate = l.AcceptRate
	p.AcceptBurst = uint32(max(l.AcceptBurst, 0))
	if l.PerSource > 0 {
		n := uint32(min(l.PerSource, 1<<32-1))
		p.MaxConnectionsPerSource = &n
	}
	return p
}

func specToProto(s listener.Spec) *listenerdv1.ListenerSpec {
	host := s.Host
	if host == "" {
		host = listener.DefaultHost
	}
	p := &listenerdv1.ListenerSpec{
		Host:           host,
		Port:           uint32(s.Port),
		Limits:         limitsToProto(s.Limits),
		AllowHalfOpen:  s.AllowHalfOpen,
		PauseOnConnect: s.PauseOnConnect,
		Handler:        handlerToProto(s.Handler),
	}
	if s.Backlog > 0 {
		b := uint32(s.Backlog)
		p.Backlog = &b
	}
	if s.Nagle {
		f := false
		p.NoDelay = &f
	}
	switch {
	case s.KeepAlive < 0:
		p.Keepalive = durationpb.New(0)
	case s.KeepAlive > 0:
		p.Keepalive = durationpb.New(s.KeepAlive)
	}
	for _, c := range s.Allow {
		p.AllowCidrs = append(p.AllowCidrs, c.String())
	}
	for _, c := range s.Deny {
		p.DenyCidrs = append(p.DenyCidrs, c.String())
	}
	for _, f := range s.Faults {
		p.Faults = append(p.Faults, faultToProto(f))
	}
	return p
}

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func listenerToProto(in listener.Info) *listenerdv1.Listener {
	return &listenerdv1.Listener{
		Id:   in.ID,
		Name: in.Name,
		Spec: specToProto(in.Spec),
		Status: &listenerdv1.ListenerStatus{
			State:               listenerdv1.State(in.State),
			BoundAddress:        in.Bound,
			ActiveConnections:   in.Active,
			QueuedConnections:   in.Queued,
			AcceptedConnections: in.Accepted,
			RejectedConnections: in.Rejected,
			BytesIn:             in.BytesIn,
			BytesOut:            in.BytesOut,
			CreateTime:          timestamp(in.Created),
			LastError:           in.LastError,
			CloseTime:           timestamp(in.Closed),
			Declared:            in.Declared,
		},
	}
}

func tupleToProto(t events.Tuple) *listenerdv1.FiveTuple {
	return &listenerdv1.FiveTuple{
		RemoteAddress: t.Remote.Addr().String(),
		RemotePort:    uint32(t.Remote.Port()),
		Family:        familyOf(t.Remote.Addr()),
		LocalAddress:  t.Local.Addr().String(),
		LocalPort:     uint32(t.Local.Port()),
	}
}

// familyOf is a five-tuple's family, by its remote address.
func familyOf(a netip.Addr) listenerdv1.Family {
	if a.Is4() {
		return listenerdv1.Family_FAMILY_IPV4
	}
	return listenerdv1.Family_FAMILY_IPV6
}

func connToProto(c listener.ConnInfo) *listenerdv1.Connection {
	state := listenerdv1.ConnectionState_CONNECTION_STATE_OPEN
	if c.Queued {
		state = listenerdv1.ConnectionState_CONNECTION_STATE_QUEUED
	}
	var wait *durationpb.Duration
	if c.QueueWait > 0 {
		wait = durationpb.New(c.QueueWait)
	}
	return &listenerdv1.Connection{
		Id:         c.ID,
		ListenerId: c.Listener,
		Tuple:      tupleToProto(c.Tuple),
		OpenTime:   timestamp(c.Opened),
		BytesIn:    c.BytesIn,
		BytesOut:   c.BytesOut,
		State:      state,
		QueueWait:  wait,
		Faults:     connFaultsToProto(c.Faults),
	}
}

// eventToProto converts one event. The connection event kinds carry their
// five-tuple; the rarer kinds their detail.
func eventToProto(e *events.Event, boot string, dataMax int) *listenerdv1.Event {
	p := &listenerdv1.Event{
		Sequence:   e.Seq,
		Time:       timestamppb.New(time.Unix(0, e.Time)),
		ListenerId: e.Listener,
		BootId:     boot,
	}
	d := e.Detail
	if d == nil {
		d = &events.Detail{}
	}
	switch e.Kind {
	case events.KindListenerStarted:
		p.Kind = &listenerdv1.Event_ListenerStarted{ListenerStarted: &listenerdv1.ListenerStarted{BoundAddress: d.Address, Name: d.Name}}
	// Watch streams write these two kinds with encodeConnEvent
	// (encode_conn.go): a change here goes there too, and to the random
	// events of TestEncodeConnEvent.
	case events.KindConnectionOpened:
		p.Kind = &listenerdv1.Event_ConnectionOpened{ConnectionOpened: &listenerdv1.ConnectionOpened{
			ConnectionId: e.ConnID(), Tuple: tupleToProto(e.Tuple)}}
	case events.KindConnectionClosed:
		p.Kind = &listenerdv1.Event_ConnectionClosed{ConnectionClosed: &listenerdv1.ConnectionClosed{
			ConnectionId: e.ConnID(), Tuple: tupleToProto(e.Tuple),
			BytesIn: e.BytesIn, BytesOut: e.BytesOut, Duration: durationpb.New(e.Duration),
			Reason: listenerdv1.CloseReason(e.Close), Error: d.Error, Fault: faultName(d)}}
	case events.KindConnectionHalfClosed:
		p.Kind = &listenerdv1.Event_ConnectionHalfClosed{ConnectionHalfClosed: &listenerdv1.ConnectionHalfClosed{ConnectionId: e.ConnID()}}
	case events.KindConnectionRejected:
		r := &listenerdv1.ConnectionRejected{Tuple: tupleToProto(e.Tuple), Reason: listenerdv1.RejectReason(e.Reject),
			ConnectionId: e.ConnID(), Fault: faultName(d)}
		if e.Conn != 0 { // it waited in the queue
			r.QueueWait = durationpb.New(e.Duration)
		}
		p.Kind = &listenerdv1.Event_ConnectionRejected{ConnectionRejected: r}
	case events.KindHandlerAttached:
		p.Kind = &listenerdv1.Event_HandlerAttached{HandlerAttached: &listenerdv1.HandlerAttached{
			HandlerId: d.Handler, Label: d.Name, MaxConnections: uint32(d.Count)}}
	case events.KindHandlerDetached:
		p.Kind = &listenerdv1.Event_HandlerDetached{HandlerDetached: &listenerdv1.HandlerDetached{HandlerId: d.Handler, Reason: d.Error}}
	case events.KindConnectionTaken:
		p.Kind = &listenerdv1.Event_ConnectionTaken{ConnectionTaken: &listenerdv1.ConnectionTaken{ConnectionId: e.ConnID(), HandlerId: d.Handler}}
	case events.KindConnectionQueued:
		p.Kind = &listenerdv1.Event_ConnectionQueued{ConnectionQueued: &listenerdv1.ConnectionQueued{
			ConnectionId: e.ConnID(), Tuple: tupleToProto(e.Tuple), Position: uint32(d.Position)}}
	case events.KindAcceptError:
		p.Kind = &listenerdv1.Event_AcceptError{AcceptError: &listenerdv1.AcceptError{
			Error: d.Error, Backoff: durationpb.New(d.Backoff), Count: d.Count}}
	case events.KindLimitsChanged:
		p.Kind = &listenerdv1.Event_LimitsChanged{LimitsChanged: &listenerdv1.LimitsChanged{Limits: limitsToProto(d.Limits)}}
	case events.KindConnectionData:
		dir := listenerdv1.Direction_DIRECTION_IN
		if d.Outbound {
			dir = listenerdv1.Direction_DIRECTION_OUT
		}
		data := d.Data
		if len(data) > dataMax {
			data = data[:dataMax]
		}
		p.Kind = &listenerdv1.Event_ConnectionData{ConnectionData: &listenerdv1.ConnectionData{
			ConnectionId: e.ConnID(), Direction: dir, Data: data, Length: e.BytesIn}}
	case events.KindFaultAdded, events.KindFaultRemoved, events.KindFaultApplied:
		faultEventToProto(p, e, d)
	case events.KindListenerReconciled:
		r := &listenerdv1.ListenerReconciled{Name: d.Name, Error: d.Error}
		if d.Reconcile != nil {
			r.Action, r.Change, r.Source = d.Reconcile.Action, d.Reconcile.Change, d.Reconcile.Source
		}
		p.Kind = &listenerdv1.Event_ListenerReconciled{ListenerReconciled: r}
	case events.KindListenerClosed:
		p.Kind = &listenerdv1.Event_ListenerClosed{ListenerClosed: &listenerdv1.ListenerClosed{Drained: d.Drained, Destroyed: d.Destroyed}}
	}
	return p
}
