package main

import (
	"context"
	"fmt"
	"math"
	"net"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

func durationOf(seconds int64) *durationpb.Duration { return &durationpb.Duration{Seconds: seconds} }

// badCall is one malformed request and what DESIGN.md and
// docs/behaviour.md say it gets: a code (or, where the documents allow
// two readings, one of a few) and a word the message must hold (the field,
// or the value asked for).
type badCall struct {
	name  string
	call  func(ctx context.Context) error
	codes []codes.Code
	word  string
}

var (
	inval     = []codes.Code{codes.InvalidArgument}
	notFound  = []codes.Code{codes.NotFound}
	invalOrNF = []codes.Code{codes.InvalidArgument, codes.NotFound}
)

func (p *probe) badCallTable(c listenerdv1.ListenerServiceClient, id, port, connID string) []badCall {
	var out []badCall
	add := func(name string, cs []codes.Code, word string, call func(ctx context.Context) error) {
		out = append(out, badCall{name: name, call: call, codes: cs, word: word})
	}
	create := func(name string, spec *listenerdv1.ListenerSpec) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			_, err := c.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: name, Spec: spec})
			return err
		}
	}
	lim := func(l *listenerdv1.Limits) *listenerdv1.ListenerSpec { return &listenerdv1.ListenerSpec{Limits: l} }
	fwd := func(f *listenerdv1.ForwardHandler) *listenerdv1.ListenerSpec {
		return &listenerdv1.ListenerSpec{Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Forward{Forward: f}}}
	}
	neg := durationpb.New(-time.Second)
	huge := durationOf(1e11)
	badNanos := &durationpb.Duration{Seconds: 1, Nanos: 2e9}

	// CreateListener: every field.
	add("create: no spec", inval, "spec", create("", nil))
	for _, port := range []uint32{65536, 70000, math.MaxUint32} {
		add(fmt.Sprintf("create: port %d", port), inval, "spec.port", create("", &listenerdv1.ListenerSpec{Port: port}))
	}
	for _, h := range []string{"bad host!", "192.0.2.7", "256.0.0.1", "::ffff:zz", strings.Repeat("a", 300), "10.0.0.1/8", "host.invalid"} {
		if h == "host.invalid" && p.cfg.quick {
			continue // a resolver may take its full timeout to say no
		}
		add(fmt.Sprintf("create: host %.20q", h), inval, "spec.host", create("", &listenerdv1.ListenerSpec{Host: h}))
	}
	add("create: allow 10.0.0.0/33", inval, "spec.allow_cidrs[0]", create("", &listenerdv1.ListenerSpec{AllowCidrs: []string{"10.0.0.0/33"}}))
	add("create: allow second bad", inval, "spec.allow_cidrs[1]", create("", &listenerdv1.ListenerSpec{AllowCidrs: []string{"10.0.0.0/8", "nope"}}))
	add("create: allow fd00::1/129", inval, "spec.allow_cidrs[0]", create("", &listenerdv1.ListenerSpec{AllowCidrs: []string{"fd00::/129"}}))
	add("create: deny nope", inval, "spec.deny_cidrs[0]", create("", &listenerdv1.ListenerSpec{DenyCidrs: []string{"nope"}}))
	add("create: deny host bits", inval, "spec.deny_cidrs[0]", create("", &listenerdv1.ListenerSpec{DenyCidrs: []string{"10.1.2.3/8"}}))
	add("create: deny empty", inval, "spec.deny_cidrs[0]", create("", &listenerdv1.ListenerSpec{DenyCidrs: []string{""}}))
	add("create: backlog 0", inval, "spec.backlog", create("", &listenerdv1.ListenerSpec{Backlog: ptr(uint32(0))}))
	add("create: backlog max", inval, "spec.backlog", create("", &listenerdv1.ListenerSpec{Backlog: ptr(uint32(math.MaxUint32))}))
	add("create: overflow 9", inval, "spec.limits.overflow", create("", lim(&listenerdv1.Limits{Overflow: 9})))
	add("create: overflow -1", inval, "spec.limits.overflow", create("", lim(&listenerdv1.Limits{Overflow: -1})))
	add("create: idle -1s", inval, "spec.limits.idle_timeout", create("", lim(&listenerdv1.Limits{IdleTimeout: neg})))
	add("create: idle 1e11s", inval, "spec.limits.idle_timeout", create("", lim(&listenerdv1.Limits{IdleTimeout: huge})))
	add("create: idle bad nanos", inval, "spec.limits.idle_timeout", create("", lim(&listenerdv1.Limits{IdleTimeout: badNanos})))
	add("create: lifetime -1s", inval, "spec.limits.max_lifetime", create("", lim(&listenerdv1.Limits{MaxLifetime: neg})))
	add("create: lifetime 1e11s", inval, "spec.limits.max_lifetime", create("", lim(&listenerdv1.Limits{MaxLifetime: huge})))
	add("create: queue timeout -1s", inval, "spec.limits.queue_timeout", create("", lim(&listenerdv1.Limits{Overflow: listenerdv1.OverflowPolicy_OVERFLOW_POLICY_QUEUE, QueueTimeout: neg})))
	add("create: queue length 70000", inval, "spec.limits.queue_length", create("", lim(&listenerdv1.Limits{Overflow: listenerdv1.OverflowPolicy_OVERFLOW_POLICY_QUEUE, QueueLength: 70000})))
	for _, r := range []float64{-1, math.NaN(), math.Inf(1), 1e300} {
		add(fmt.Sprintf("create: accept rate %v", r), inval, "spec.limits.accept_rate", create("", lim(&listenerdv1.Limits{AcceptRate: r})))
	}
	add("create: accept burst max", inval, "spec.limits.accept_burst", create("", lim(&listenerdv1.Limits{AcceptRate: 10, AcceptBurst: math.MaxUint32})))
	add("create: keepalive -1s", inval, "spec.keepalive", create("", &listenerdv1.ListenerSpec{Keepalive: neg}))
	add("create: keepalive 1e11s", inval, "spec.keepalive", create("", &listenerdv1.ListenerSpec{Keepalive: huge}))
	add("create: forward no upstream", inval, "spec.handler.forward.upstream", create("", fwd(&listenerdv1.ForwardHandler{})))
	for _, u := range []string{"nohost", "127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1:-1", ":80", "bad host!:80"} {
		add(fmt.Sprintf("create: upstream %q", u), inval, "spec.handler.forward.upstream", create("", fwd(&listenerdv1.ForwardHandler{Upstream: u})))
	}
	add("create: upstream timeout -1s", inval, "spec.handler.forward.connect_timeout", create("", fwd(&listenerdv1.ForwardHandler{Upstream: "127.0.0.1:9", ConnectTimeout: neg})))
	add("create: upstream timeout 5m1s", inval, "spec.handler.forward.connect_timeout", create("", fwd(&listenerdv1.ForwardHandler{Upstream: "127.0.0.1:9", ConnectTimeout: durationOf(301)})))
	add("create: stream claim -1s", inval, "spec.handler.stream.claim_timeout", create("", &listenerdv1.ListenerSpec{Handler: &listenerdv1.Handler{
		Kind: &listenerdv1.Handler_Stream{Stream: &listenerdv1.StreamHandler{ClaimTimeout: neg}}}}))
	// A request over the daemon's 64 KiB message cap: RESOURCE_EXHAUSTED, from gRPC.
	add("create: name of 64 KiB", []codes.Code{codes.ResourceExhausted}, "larger than max", create(strings.Repeat("x", 1<<16), &listenerdv1.ListenerSpec{}))
	for _, n := range []string{"No Spaces", strings.Repeat("a", 64), "-lead", "ln-12345678", "é", "a/b"} {
		add(fmt.Sprintf("create: name %.20q", n), inval, "name", create(n, &listenerdv1.ListenerSpec{}))
	}
	add("create: name taken", []codes.Code{codes.AlreadyExists}, "bad-target", create("bad-target", &listenerdv1.ListenerSpec{}))
	add("create: port in use", []codes.Code{codes.FailedPrecondition}, "address already in use", create("", &listenerdv1.ListenerSpec{Port: atoi(port)}))
	add("create: fault without bytes", inval, "spec.faults[0]", create("", &listenerdv1.ListenerSpec{Faults: []*listenerdv1.Fault{{Name: "x", Kind: listenerdv1.FaultKind_FAULT_KIND_LIMIT_DATA}}}))
	add("create: fault without name", inval, "spec.faults[0].name", create("", &listenerdv1.ListenerSpec{Faults: []*listenerdv1.Fault{{Kind: listenerdv1.FaultKind_FAULT_KIND_BLACKHOLE}}}))
	add("create: faults same name", inval, "spec.faults[1]", create("", &listenerdv1.ListenerSpec{Faults: []*listenerdv1.Fault{
		{Name: "x", Kind: listenerdv1.FaultKind_FAULT_KIND_BLACKHOLE}, {Name: "x", Kind: listenerdv1.FaultKind_FAULT_KIND_BLACKHOLE}}}))

	// UpdateListener.
	update := func(lid string, l *listenerdv1.Limits, paths ...string) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			var mask *fieldmaskpb.FieldMask
			if paths != nil {
				mask = &fieldmaskpb.FieldMask{Paths: paths}
			}
			_, err := c.UpdateListener(ctx, &listenerdv1.UpdateListenerRequest{
				Listener: &listenerdv1.Listener{Id: lid, Spec: &listenerdv1.ListenerSpec{Limits: l}}, UpdateMask: mask})
			return err
		}
	}
	add("update: no listener", inval, "listener", func(ctx context.Context) error {
		_, err := c.UpdateListener(ctx, &listenerdv1.UpdateListenerRequest{UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"spec.limits"}}})
		return err
	})
	add("update: no mask", inval, "update_mask", update(id, &listenerdv1.Limits{}))
	add("update: empty mask", inval, "update_mask", update(id, &listenerdv1.Limits{}, []string{}...))
	for _, path := range []string{"spec.port", "spec.limits.bogus", "", "spec.host", "status.state", "spec.limits.max_connections.x"} {
		add(fmt.Sprintf("update: path %q", path), inval, "update_mask", update(id, &listenerdv1.Limits{}, path))
	}
	add("update: no id", inval, "id", update("", &listenerdv1.Limits{}, "spec.limits"))
	add("update: unknown id", notFound, "ln-00000000", update("ln-00000000", &listenerdv1.Limits{}, "spec.limits"))
	add("update: unknown name", notFound, "ghost", update("ghost", &listenerdv1.Limits{}, "spec.limits"))
	add("update: id ../../etc", invalOrNF, "../../etc", update("../../etc", &listenerdv1.Limits{}, "spec.limits"))
	add("update: lifetime -1s", inval, "spec.limits.max_lifetime", update(id, &listenerdv1.Limits{MaxLifetime: neg}, "spec.limits.max_lifetime"))
	add("update: idle -1s", inval, "spec.limits.idle_timeout", update(id, &listenerdv1.Limits{IdleTimeout: neg}, "spec.limits.idle_timeout"))
	add("update: idle 1e11s", inval, "spec.limits.idle_timeout", update(id, &listenerdv1.Limits{IdleTimeout: huge}, "spec.limits"))
	add("update: overflow 42", inval, "spec.limits.overflow", update(id, &listenerdv1.Limits{Overflow: 42}, "spec.limits.overflow"))
	add("update: accept rate -5", inval, "spec.limits.accept_rate", update(id, &listenerdv1.Limits{AcceptRate: -5}, "spec.limits.accept_rate"))
	add("update: accept rate NaN", inval, "spec.limits.accept_rate", update(id, &listenerdv1.Limits{AcceptRate: math.NaN()}, "spec.limits"))
	add("update: queue length 70000", inval, "spec.limits.queue_length", update(id, &listenerdv1.Limits{QueueLength: 70000}, "spec.limits.queue_length"))
	add("update: queue timeout -1s", inval, "spec.limits.queue_timeout", update(id, &listenerdv1.Limits{QueueTimeout: neg}, "spec.limits.queue_timeout"))

	// CloseListener, GetListener, RebindListener.
	closeL := func(lid string, drain *durationpb.Duration) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			_, err := c.CloseListener(ctx, &listenerdv1.CloseListenerRequest{Id: lid, DrainTimeout: drain})
			return err
		}
	}
	add("close: no id", inval, "id", closeL("", nil))
	add("close: unknown", notFound, "ln-00000000", closeL("ln-00000000", nil))
	add("close: unknown name", notFound, "ghost", closeL("ghost", nil))
	add("close: drain -1s", inval, "drain_timeout", closeL(id, neg))
	add("close: drain 1e11s", inval, "drain_timeout", closeL(id, huge))
	add("close: drain bad nanos", inval, "drain_timeout", closeL(id, badNanos))
	add("close: id of 1 MiB", []codes.Code{codes.ResourceExhausted}, "larger than max", closeL(strings.Repeat("z", 1<<20), nil))
	add("close: id of 60 KiB", invalOrNF, "id", closeL(strings.Repeat("z", 60<<10), nil))
	add("get: no id", inval, "id", func(ctx context.Context) error {
		_, err := c.GetListener(ctx, &listenerdv1.GetListenerRequest{})
		return err
	})
	add("get: unknown", notFound, "ln-00000000", func(ctx context.Context) error {
		_, err := c.GetListener(ctx, &listenerdv1.GetListenerRequest{Id: "ln-00000000"})
		return err
	})
	add("rebind: no id", inval, "id", func(ctx context.Context) error {
		_, err := c.RebindListener(ctx, &listenerdv1.RebindListenerRequest{})
		return err
	})
	add("rebind: unknown", notFound, "ghost", func(ctx context.Context) error {
		_, err := c.RebindListener(ctx, &listenerdv1.RebindListenerRequest{Id: "ghost"})
		return err
	})

	// WatchEvents.
	watch := func(req *listenerdv1.WatchEventsRequest) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			s, err := c.WatchEvents(ctx, req)
			if err != nil {
				return err
			}
			if _, err = s.Recv(); err != nil {
				return err
			}
			return nil
		}
	}
	add("watch: kind 99", inval, "kinds[0]", watch(&listenerdv1.WatchEventsRequest{Kinds: []listenerdv1.EventKind{99}}))
	add("watch: second kind -3", inval, "kinds[1]", watch(&listenerdv1.WatchEventsRequest{Kinds: []listenerdv1.EventKind{1, -3}}))
	add("watch: after 2^63", []codes.Code{codes.OutOfRange}, "after_sequence", watch(&listenerdv1.WatchEventsRequest{AfterSequence: ptr(uint64(1) << 63)}))
	add("watch: after max", []codes.Code{codes.OutOfRange}, "after_sequence", watch(&listenerdv1.WatchEventsRequest{AfterSequence: ptr(uint64(math.MaxUint64))}))
	add("watch: other boot", []codes.Code{codes.OutOfRange}, "boot_id", watch(&listenerdv1.WatchEventsRequest{BootId: "feedface", AfterSequence: ptr(uint64(1))}))
	add("watch: unknown listener", notFound, "ghost", watch(&listenerdv1.WatchEventsRequest{ListenerIds: []string{"ghost"}}))
	// (an unknown id-shaped ref is accepted: a closed listener's events stay watchable)
	add("watch: second listener unknown", notFound, "ghost2", watch(&listenerdv1.WatchEventsRequest{ListenerIds: []string{id, "ghost2"}}))
	add("watch: empty listener id", invalOrNF, "listener_ids[0]", watch(&listenerdv1.WatchEventsRequest{ListenerIds: []string{""}}))

	// ListConnections, CloseConnection.
	add("conns: no id", inval, "listener_id", func(ctx context.Context) error {
		_, err := c.ListConnections(ctx, &listenerdv1.ListConnectionsRequest{})
		return err
	})
	add("conns: unknown", notFound, "ghost", func(ctx context.Context) error {
		_, err := c.ListConnections(ctx, &listenerdv1.ListConnectionsRequest{ListenerId: "ghost"})
		return err
	})
	kick := func(cid string, cs []codes.Code, word string) {
		add(fmt.Sprintf("kick: %.30q", cid), cs, word, func(ctx context.Context) error {
			_, err := c.CloseConnection(ctx, &listenerdv1.CloseConnectionRequest{Id: cid, Reset_: true})
			return err
		})
	}
	kick("", inval, "id")
	kick("nodot", inval, "id")
	kick(id+".999999", notFound, id+".999999")
	kick("ghost.1", notFound, "ghost.1")
	kick("ln-00000000.1", notFound, "ln-00000000.1")
	kick(id+".x", invalOrNF, "id")
	kick(id+".-1", invalOrNF, "id")
	kick(id+".18446744073709551616", invalOrNF, "id")
	kick(connID+"0", notFound, connID+"0")

	// The fault RPCs.
	addFault := func(lid string, f *listenerdv1.Fault) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			_, err := c.AddFault(ctx, &listenerdv1.AddFaultRequest{ListenerId: lid, Fault: f})
			return err
		}
	}
	bh := func(f *listenerdv1.Fault) *listenerdv1.Fault {
		if f.Name == "" {
			f.Name = "f"
		}
		if f.Kind == 0 {
			f.Kind = listenerdv1.FaultKind_FAULT_KIND_BLACKHOLE
		}
		return f
	}
	add("fault: no listener", inval, "listener_id", addFault("", bh(&listenerdv1.Fault{})))
	add("fault: unknown listener", notFound, "ghost", addFault("ghost", bh(&listenerdv1.Fault{})))
	add("fault: none", inval, "fault", addFault(id, nil))
	add("fault: no name", inval, "fault.name", addFault(id, &listenerdv1.Fault{Kind: listenerdv1.FaultKind_FAULT_KIND_BLACKHOLE}))
	add("fault: bad name", inval, "fault.name", addFault(id, bh(&listenerdv1.Fault{Name: "Bad Name"})))
	add("fault: no kind", inval, "fault.kind", addFault(id, &listenerdv1.Fault{Name: "f"}))
	add("fault: kind 99", inval, "fault.kind", addFault(id, &listenerdv1.Fault{Name: "f", Kind: 99}))
	add("fault: direction 7", inval, "fault.direction", addFault(id, bh(&listenerdv1.Fault{Direction: 7})))
	for _, pr := range []float64{1.5, -0.1, math.NaN(), math.Inf(-1)} {
		add(fmt.Sprintf("fault: probability %v", pr), inval, "fault.probability", addFault(id, bh(&listenerdv1.Fault{Probability: ptr(pr)})))
	}
	add("fault: source nope", inval, "fault.scope.source_cidrs[0]", addFault(id, bh(&listenerdv1.Fault{Scope: &listenerdv1.FaultScope{SourceCidrs: []string{"nope"}}})))
	add("fault: connection nodot", inval, "fault.scope.connection_ids[0]", addFault(id, bh(&listenerdv1.Fault{Scope: &listenerdv1.FaultScope{ConnectionIds: []string{"nodot"}}})))
	add("fault: ttl -1s", inval, "fault.ttl", addFault(id, bh(&listenerdv1.Fault{Ttl: neg})))
	add("fault: ttl 1e11s", inval, "fault.ttl", addFault(id, bh(&listenerdv1.Fault{Ttl: huge})))
	add("fault: latency -1s", inval, "fault.latency", addFault(id, &listenerdv1.Fault{Name: "f", Kind: listenerdv1.FaultKind_FAULT_KIND_LATENCY, Latency: neg}))
	add("fault: jitter -1s", inval, "fault.jitter", addFault(id, &listenerdv1.Fault{Name: "f", Kind: listenerdv1.FaultKind_FAULT_KIND_LATENCY, Latency: durationOf(1), Jitter: neg}))
	add("fault: delay -1s", inval, "fault.delay", addFault(id, &listenerdv1.Fault{Name: "f", Kind: listenerdv1.FaultKind_FAULT_KIND_SLOW_CLOSE, Delay: neg}))
	add("fault: bandwidth no rate", inval, "fault.rate", addFault(id, &listenerdv1.Fault{Name: "f", Kind: listenerdv1.FaultKind_FAULT_KIND_BANDWIDTH}))
	add("fault: limit_data no bytes", inval, "fault.bytes", addFault(id, &listenerdv1.Fault{Name: "f", Kind: listenerdv1.FaultKind_FAULT_KIND_LIMIT_DATA}))
	add("fault: name taken", []codes.Code{codes.AlreadyExists}, "kept", addFault(id, bh(&listenerdv1.Fault{Name: "kept"})))
	add("fault: update unknown", notFound, "other", func(ctx context.Context) error {
		_, err := c.UpdateFault(ctx, &listenerdv1.UpdateFaultRequest{ListenerId: id, Fault: bh(&listenerdv1.Fault{Name: "other"})})
		return err
	})
	add("fault: remove no name", inval, "name", func(ctx context.Context) error {
		_, err := c.RemoveFault(ctx, &listenerdv1.RemoveFaultRequest{ListenerId: id})
		return err
	})
	add("fault: remove unknown", notFound, "other", func(ctx context.Context) error {
		_, err := c.RemoveFault(ctx, &listenerdv1.RemoveFaultRequest{ListenerId: id, Name: "other"})
		return err
	})
	add("fault: list unknown listener", notFound, "ghost", func(ctx context.Context) error {
		_, err := c.ListFaults(ctx, &listenerdv1.ListFaultsRequest{ListenerId: "ghost"})
		return err
	})
	return out
}

func atoi(s string) uint32 {
	var n uint32
	_, _ = fmt.Sscan(s, &n)
	return n
}

// rawCodec sends bytes as they are: a request that is not a protobuf
// message.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = data
	return nil
}
func (rawCodec) Name() string { return "proto" }

var _ encoding.Codec = rawCodec{}

// badCalls is phase 6.
func (p *probe) badCalls(ctx context.Context, r *result) error {
	d := p.main
	c := d.c
	resp, err := c.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: "bad-target", Spec: &listenerdv1.ListenerSpec{
		Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Echo{Echo: &listenerdv1.EchoHandler{}}}}})
	if err != nil {
		return err
	}
	l := resp.GetListener()
	id := l.GetId()
	_, port, _ := net.SplitHostPort(l.GetStatus().GetBoundAddress())
	if _, err := c.AddFault(ctx, &listenerdv1.AddFaultRequest{ListenerId: id, Fault: &listenerdv1.Fault{Name: "kept", Kind: listenerdv1.FaultKind_FAULT_KIND_LATENCY, Latency: durationpb.New(time.Millisecond)}}); err != nil {
		return err
	}
	// One connection held open, for a real connection id.
	held, err := net.Dial("tcp", l.GetStatus().GetBoundAddress())
	if err != nil {
		return err
	}
	var connID string
	for range 1000 {
		cs, err := c.ListConnections(ctx, &listenerdv1.ListConnectionsRequest{ListenerId: id})
		if err != nil {
			held.Close()
			return err
		}
		if len(cs.GetConnections()) > 0 {
			connID = cs.GetConnections()[0].GetId()
			break
		}
		time.Sleep(5 * time.Millisecond) // polling until the accept is listed
	}
	held.Close()
	for range 1000 { // until the daemon has seen it close
		g, err := c.GetListener(ctx, &listenerdv1.GetListenerRequest{Id: id})
		if err != nil {
			return err
		}
		if g.GetListener().GetStatus().GetActiveConnections() == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond) // polling the listener's count
	}
	baseFDs, baseG := d.fds(), d.goroutines()
	calls := p.badCallTable(c, id, port, connID)
	for _, bc := range calls {
		cctx, cancel := context.WithTimeout(ctx, guard)
		err := bc.call(cctx)
		cancel()
		st := status.Convert(err)
		switch {
		case err == nil:
			r.fail("%s: accepted (want %v naming %q)", bc.name, bc.codes, bc.word)
		case !slices.Contains(bc.codes, st.Code()):
			r.fail("%s: %v %q (want %v naming %q)", bc.name, st.Code(), clip(st.Message(), 160), bc.codes, bc.word)
		case !strings.Contains(st.Message(), bc.word):
			r.fail("%s: %v %q does not name %q", bc.name, st.Code(), clip(st.Message(), 160), bc.word)
		}
	}
	n := len(calls)
	// A request that is not a protobuf message: INTERNAL, as gRPC answers.
	var out []byte
	err = d.conn.Invoke(ctx, listenerdv1.ListenerService_CreateListener_FullMethodName, []byte{0xff, 0xff, 0xff, 0xff, 0x0f}, &out, grpc.ForceCodecV2(nil), grpc.ForceCodec(rawCodec{}))
	n++
	if status.Code(err) != codes.Internal {
		r.fail("not a protobuf message: %v, want INTERNAL", err)
	}
	// Bytes that are not gRPC at all on the API socket.
	for _, junk := range [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		[]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00"), // preface, then a cut frame
		[]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\x00\x00\x00\x00\x00\x01" + strings.Repeat("\x00", 64)),
		[]byte(strings.Repeat("\x16\x03\x01\x02\x00\x01", 100)), // TLS-like hello on a plain socket
		{},
	} {
		n++
		nc, err := net.Dial("unix", d.socket)
		if err != nil {
			r.fail("raw connect to the API socket: %v", err)
			continue
		}
		_ = nc.SetDeadline(time.Now().Add(guard))
		_, _ = nc.Write(junk)
		buf := make([]byte, 4096)
		for range 100 { // read what it answers, until it closes
			if _, err := nc.Read(buf); err != nil {
				break
			}
		}
		nc.Close()
	}
	if _, err := c.GetDaemonStatus(ctx, &listenerdv1.GetDaemonStatusRequest{}); err != nil {
		r.fail("the daemon does not answer after the bad calls: %v", err)
	}
	r.count("calls", n)
	if _, err := c.CloseListener(ctx, &listenerdv1.CloseListenerRequest{Id: id, Force: true}); err != nil {
		return err
	}
	// Every bad call's goroutines and descriptors are gone again; the
	// listener closed gives back its socket (and a goroutine or two).
	fds, g := d.settle(ctx, baseFDs-1, baseG, 0, 0)
	r.count("fds before/after", fmt.Sprintf("%d/%d", baseFDs, fds))
	r.count("goroutines before/after", fmt.Sprintf("%d/%d", baseG, g))
	if fds > baseFDs-1 {
		r.fail("descriptors: %d before the bad calls, %d after (the listener closed)", baseFDs, fds)
	}
	if g > baseG {
		r.fail("goroutines: %d before the bad calls, %d after", baseG, g)
	}
	if n := d.panics(); n > 0 {
		r.fail("%d panic lines on the daemon's stderr", n)
	}
	return nil
}
