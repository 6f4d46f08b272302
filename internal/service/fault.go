package service

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
)

// maxFaults bounds the faults of one request (a spec's).
const maxFaults = 64

// faultFromProto validates and converts a fault; field is its path.
func faultFromProto(field string, p *listenerdv1.Fault, now time.Time) (listener.Fault, error) {
	var f listener.Fault
	if p == nil {
		return f, listener.Invalid(field, "required")
	}
	f.Name = p.GetName()
	f.Kind = events.FaultKind(p.GetKind())
	f.Direction = events.FaultDirection(p.GetDirection())
	f.Probability = 1
	if p.Probability != nil {
		f.Probability = p.GetProbability()
	}
	sc := p.GetScope()
	f.NewOnly = sc.GetNewOnly()
	if len(sc.GetConnectionIds()) > maxCIDRs {
		return f, listener.Invalid(field+".scope.connection_ids", "%d entries, at most %d", len(sc.GetConnectionIds()), maxCIDRs)
	}
	f.Conns = sc.GetConnectionIds()
	var err error
	if f.Sources, err = cidrs(field+".scope.source_cidrs", sc.GetSourceCidrs()); err != nil {
		return f, err
	}
	var ttl time.Duration
	for _, d := range []struct {
		name string
		in   *durationpb.Duration
		out  *time.Duration
	}{{"ttl", p.GetTtl(), &ttl}, {"latency", p.GetLatency(), &f.Latency}, {"jitter", p.GetJitter(), &f.Jitter}, {"delay", p.GetDelay(), &f.Delay}} {
		if d.in == nil {
			continue
		}
		if *d.out, err = duration(field+"."+d.name, d.in); err != nil {
			return f, err
		}
	}
	if ttl > 0 {
		f.Expires = now.Add(ttl)
	}
	const maxInt63 = 1<<63 - 1
	if p.GetRate() > maxInt63 || p.GetBurst() > maxInt63 || p.GetBytes() > maxInt63 {
		return f, listener.Invalid(field, "rate, burst and bytes must be below 2^63")
	}
	f.Rate, f.Burst, f.Bytes = int64(p.GetRate()), int64(p.GetBurst()), int64(p.GetBytes())
	f.SliceSize, f.SliceVariation = int(p.GetSliceSize()), int(p.GetSliceVariation())
	return f, listener.ValidateFault(f, field)
}

func faultsFromProto(ps []*listenerdv1.Fault) ([]listener.Fault, error) {
	if len(ps) > maxFaults {
		return nil, listener.Invalid("spec.faults", "%d faults, at most %d", len(ps), maxFaults)
	}
	var out []listener.Fault
	now := time.Now()
	for i, p := range ps {
		f, err := faultFromProto(fmt.Sprintf("spec.faults[%d]", i), p, now)
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, nil
}

func faultToProto(f listener.Fault) *listenerdv1.Fault {
	p := &listenerdv1.Fault{
		Name:      f.Name,
		Kind:      listenerdv1.FaultKind(f.Kind),
		Direction: listenerdv1.FaultDirection(f.Direction),
		Rate:      uint64(f.Rate), Burst: uint64(f.Burst), Bytes: uint64(f.Bytes),
		SliceSize: uint32(f.SliceSize), SliceVariation: uint32(f.SliceVariation),
		ExpireTime: timestamp(f.Expires),
	}
	p.Probability = &f.Probability
	if f.NewOnly || len(f.Conns) > 0 || len(f.Sources) > 0 {
		p.Scope = &listenerdv1.FaultScope{NewOnly: f.NewOnly, ConnectionIds: f.Conns}
		for _, s := range f.Sources {
			p.Scope.SourceCidrs = append(p.Scope.SourceCidrs, s.String())
		}
	}
	for _, d := range []struct {
		v   time.Duration
		out **durationpb.Duration
	}{{f.Latency, &p.Latency}, {f.Jitter, &p.Jitter}, {f.Delay, &p.Delay}} {
		if d.v > 0 {
			*d.out = durationpb.New(d.v)
		}
	}
	return p
}

// faultEventToProto sets the kind of a fault event.
func faultEventToProto(p *listenerdv1.Event, e *events.Event, d *events.Detail) {
	fe := d.Fault
	if fe == nil {
		fe = &events.FaultEvent{}
	}
	switch e.Kind {
	case events.KindFaultAdded:
		p.Kind = &listenerdv1.Event_FaultAdded{FaultAdded: &listenerdv1.FaultAdded{Fault: faultToProto(fe.Fault)}}
	case events.KindFaultRemoved:
		p.Kind = &listenerdv1.Event_FaultRemoved{FaultRemoved: &listenerdv1.FaultRemoved{
			Name: fe.Fault.Name, Kind: listenerdv1.FaultKind(fe.Fault.Kind), Expired: fe.Expired}}
	case events.KindFaultApplied:
		p.Kind = &listenerdv1.Event_FaultApplied{FaultApplied: &listenerdv1.FaultApplied{
			Name: fe.Fault.Name, Kind: listenerdv1.FaultKind(fe.Fault.Kind), ConnectionId: e.ConnID(),
			Tuple: tupleToProto(e.Tuple), Draw: fe.Draw}}
	}
}

// faultName is the name of the fault behind a close or a reject, if any.
func faultName(d *events.Detail) string {
	if d.Fault == nil {
		return ""
	}
	return d.Fault.Fault.Name
}

func connFaultsToProto(fs []listener.ConnFault) []*listenerdv1.ConnectionFault {
	var out []*listenerdv1.ConnectionFault
	for _, f := range fs {
		out = append(out, &listenerdv1.ConnectionFault{Fault: f.Fault, Draw: f.Draw, Applies: f.Applies})
	}
	return out
}

// AddFault implements ListenerService.
func (s *Service) AddFault(_ context.Context, req *listenerdv1.AddFaultRequest) (*listenerdv1.AddFaultResponse, error) {
	f, err := s.faultRequest(req.GetListenerId(), req.GetFault())
	if err == nil {
		err = s.m.AddFault(req.GetListenerId(), f)
	}
	if err != nil {
		return nil, s.err(err)
	}
	return &listenerdv1.AddFaultResponse{Fault: faultToProto(f)}, nil
}

// UpdateFault implements ListenerService.
func (s *Service) UpdateFault(_ context.Context, req *listenerdv1.UpdateFaultRequest) (*listenerdv1.UpdateFaultResponse, error) {
	f, err := s.faultRequest(req.GetListenerId(), req.GetFault())
	if err == nil {
		err = s.m.UpdateFault(req.GetListenerId(), f)
	}
	if err != nil {
		return nil, s.err(err)
	}
	return &listenerdv1.UpdateFaultResponse{Fault: faultToProto(f)}, nil
}

func (s *Service) faultRequest(id string, p *listenerdv1.Fault) (listener.Fault, error) {
	if err := requireID("listener_id", id); err != nil {
		return listener.Fault{}, err
	}
	return faultFromProto("fault", p, time.Now())
}

// RemoveFault implements ListenerService.
func (s *Service) RemoveFault(_ context.Context, req *listenerdv1.RemoveFaultRequest) (*listenerdv1.RemoveFaultResponse, error) {
	err := requireID("listener_id", req.GetListenerId())
	if err == nil {
		err = requireID("name", req.GetName())
	}
	if err == nil {
		err = s.m.RemoveFault(req.GetListenerId(), req.GetName())
	}
	if err != nil {
		return nil, s.err(err)
	}
	return &listenerdv1.RemoveFaultResponse{}, nil
}

// ListFaults implements ListenerService.
func (s *Service) ListFaults(_ context.Context, req *listenerdv1.ListFaultsRequest) (*listenerdv1.ListFaultsResponse, error) {
	if err := requireID("listener_id", req.GetListenerId()); err != nil {
		return nil, s.err(err)
	}
	fs, err := s.m.Faults(req.GetListenerId())
	if err != nil {
		return nil, s.err(err)
	}
	out := &listenerdv1.ListFaultsResponse{}
	for _, f := range fs {
		out.Faults = append(out.Faults, faultToProto(f))
	}
	return out, nil
}
