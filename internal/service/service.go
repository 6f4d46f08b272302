// Package service is the gRPC face of the listener engine: each handler
// validates its request, makes one call into the domain, converts the
// result and maps the error.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"google.golang.org/grpc"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
)

// Service implements listenerd.v1.ListenerService over a listener.Manager.
type Service struct {
	listenerdv1.UnimplementedListenerServiceServer
	m   *listener.Manager
	log *slog.Logger
	enc *encCache

	handoverPath string // the side socket of handover attaches; "": none
	upgrade      Upgrader
}

// ServeHandoverAt says where handlers attached for handover connect: the
// path the server's side socket listens on.
func (s *Service) ServeHandoverAt(path string) { s.handoverPath = path }

var _ listenerdv1.ListenerServiceServer = (*Service)(nil)

// New returns the service for m.
func New(m *listener.Manager, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{m: m, log: log, enc: new(encCache)}
}

func (s *Service) err(err error) error { return toStatus(s.log, err, nil) }

func requireID(field, id string) error {
	if id == "" {
		return listener.Invalid(field, "required")
	}
	if len(id) > maxIDLen {
		return listener.Invalid(field, "longer than %d characters", maxIDLen)
	}
	return nil
}

// CreateListener implements ListenerService.
func (s *Service) CreateListener(ctx context.Context, req *listenerdv1.CreateListenerRequest) (*listenerdv1.CreateListenerResponse, error) {
	if err := listener.ValidateName(req.GetName()); err != nil {
		return nil, s.err(err)
	}
	spec, err := specFromProto(req.GetSpec())
	if err != nil {
		return nil, s.err(err)
	}
	l, err := s.m.Create(ctx, req.GetName(), spec)
	if err != nil {
		return nil, s.err(err)
	}
	return &listenerdv1.CreateListenerResponse{Listener: listenerToProto(l.Info())}, nil
}

// GetListener implements ListenerService.
func (s *Service) GetListener(_ context.Context, req *listenerdv1.GetListenerRequest) (*listenerdv1.GetListenerResponse, error) {
	if err := requireID("id", req.GetId()); err != nil {
		return nil, s.err(err)
	}
	l, err := s.m.Get(req.GetId())
	if err != nil {
		return nil, s.err(err)
	}
	return &listenerdv1.GetListenerResponse{Listener: listenerToProto(l.Info())}, nil
}

// ListListeners implements ListenerService.
func (s *Service) ListListeners(context.Context, *listenerdv1.ListListenersRequest) (*listenerdv1.ListListenersResponse, error) {
	infos, seq := s.m.List()
	resp := &listenerdv1.ListListenersResponse{Sequence: seq, Listeners: make([]*listenerdv1.Listener, len(infos))}
	for i, in := range infos {
		resp.Listeners[i] = listenerToProto(in)
	}
	return resp, nil
}

// limitPaths are the update_mask paths UpdateListener accepts.
var limitPaths = map[string]bool{
	"spec.limits":                            true,
	"spec.limits.max_connections":            true,
	"spec.limits.overflow":                   true,
	"spec.limits.idle_timeout":               true,
	"spec.limits.max_lifetime":               true,
	"spec.limits.accept_rate":                true,
	"spec.limits.accept_burst":               true,
	"spec.limits.max_connections_per_source": true,
	"spec.limits.queue_length":               true,
	"spec.limits.queue_timeout":              true,
}

// UpdateListener implements ListenerService.
func (s *Service) UpdateListener(_ context.Context, req *listenerdv1.UpdateListenerRequest) (*listenerdv1.UpdateListenerResponse, error) {
	if err := requireID("listener.id", req.GetListener().GetId()); err != nil {
		return nil, s.err(err)
	}
	paths := req.GetUpdateMask().GetPaths()
	if len(paths) == 0 {
		return nil, s.err(listener.Invalid("update_mask", "required: name the fields to change"))
	}
	for _, p := range paths {
		if !limitPaths[p] {
			return nil, s.err(listener.Invalid("update_mask", "path %q cannot change at runtime (supported: spec.limits and its fields)", listener.Clip(p)))
		}
	}
	asked, err := limitsFromProto(req.GetListener().GetSpec().GetLimits())
	if err != nil {
		return nil, s.err(err)
	}
	info, err := s.m.SetLimits(req.GetListener().GetId(), func(cur listener.Limits) (listener.Limits, error) {
		for _, p := range paths {
			switch p {
			case "spec.limits":
				cur = asked
			case "spec.limits.max_connections":
				cur.MaxConnections = asked.MaxConnections
			case "spec.limits.overflow":
				cur.Overflow = asked.Overflow
			case "spec.limits.queue_length":
				cur.QueueLength = asked.QueueLength
			case "spec.limits.queue_timeout":
				cur.QueueTimeout = asked.QueueTimeout
			case "spec.limits.idle_timeout":
				cur.IdleTimeout = asked.IdleTimeout
			case "spec.limits.max_lifetime":
				cur.MaxLifetime = asked.MaxLifetime
			case "spec.limits.accept_rate":
				cur.AcceptRate = asked.AcceptRate
			case "spec.limits.accept_burst":
				cur.AcceptBurst = asked.AcceptBurst
			case "spec.limits.max_connections_per_source":
				cur.PerSource = asked.PerSource
			}
		}
		return cur, nil
	})
	if err != nil {
		return nil, s.err(err)
	}
	return &listenerdv1.UpdateListenerResponse{Listener: listenerToProto(info)}, nil
}

// CloseListener implements ListenerService.
func (s *Service) CloseListener(_ context.Context, req *listenerdv1.CloseListenerRequest) (*listenerdv1.CloseListenerResponse, error) {
	if err := requireID("id", req.GetId()); err != nil {
		return nil, s.err(err)
	}
	drain := listener.DefaultDrainTimeout
	if req.GetDrainTimeout() != nil {
		var err error
		if drain, err = duration("drain_timeout", req.GetDrainTimeout()); err != nil {
			return nil, s.err(err)
		}
	}
	info, err := s.m.Close(req.GetId(), drain, req.GetForce())
	if err != nil {
		return nil, s.err(err)
	}
	return &listenerdv1.CloseListenerResponse{Listener: listenerToProto(info)}, nil
}

// ListConnections implements ListenerService.
func (s *Service) ListConnections(_ context.Context, req *listenerdv1.ListConnectionsRequest) (*listenerdv1.ListConnectionsResponse, error) {
	if err := requireID("listener_id", req.GetListenerId()); err != nil {
		return nil, s.err(err)
	}
	conns, seq, err := s.m.Connections(req.GetListenerId())
	if err != nil {
		return nil, s.err(err)
	}
	resp := &listenerdv1.ListConnectionsResponse{Sequence: seq, Connections: make([]*listenerdv1.Connection, len(conns))}
	for i, c := range conns {
		resp.Connections[i] = connToProto(c)
	}
	return resp, nil
}

// CloseConnection implements ListenerService.
func (s *Service) CloseConnection(_ context.Context, req *listenerdv1.CloseConnectionRequest) (*listenerdv1.CloseConnectionResponse, error) {
	if err := requireID("id", req.GetId()); err != nil {
		return nil, s.err(err)
	}
	if err := s.m.CloseConnection(req.GetId(), req.GetReset_()); err != nil {
		return nil, s.err(err)
	}
	return &listenerdv1.CloseConnectionResponse{}, nil
}

// RebindListener implements ListenerService.
func (s *Service) RebindListener(ctx context.Context, req *listenerdv1.RebindListenerRequest) (*listenerdv1.RebindListenerResponse, error) {
	if err := requireID("id", req.GetId()); err != nil {
		return nil, s.err(err)
	}
	l, err := s.m.Rebind(ctx, req.GetId())
	if err != nil {
		return nil, s.err(err)
	}
	return &listenerdv1.RebindListenerResponse{Listener: listenerToProto(l.Info())}, nil
}

// watchBatch is the most events sent in one response.
const watchBatch = 256

// watchLinger is how long a small batch on a busy stream (one that sent a
// batch less than this ago) waits for more events before it is sent: under
// load a stream sends fewer, larger responses, which saves gRPC and syscall
// work per event on both ends (bench case g: 1 ms gave about 55 events a
// response, 5 ms about 115, and the watchers' clients a fifth less CPU). A
// quiet stream's first event goes out at once.
const watchLinger = 5 * time.Millisecond

// defaultDataBytes is the data kept per data event when the watcher does
// not say.
const defaultDataBytes = 256

// WatchEvents implements ListenerService.
func (s *Service) WatchEvents(req *listenerdv1.WatchEventsRequest, stream grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
	filter, err := s.watchFilter(req)
	if err != nil {
		return s.err(err)
	}
	bus := s.m.Bus()
	if b := req.GetBootId(); b != "" && b != bus.BootID() {
		return toStatus(s.log, fmt.Errorf("boot_id %q: the daemon restarted (now %q); its sequences start again: re-list and watch from now: %w",
			listener.Clip(b), bus.BootID(), ErrBootMismatch), map[string]string{"boot_id": bus.BootID()})
	}
	w, head, err := bus.Watch(filter, req.AfterSequence)
	if err != nil {
		var re *events.RangeError
		if errors.As(err, &re) {
			return toStatus(s.log, fmt.Errorf("after_sequence %d: history holds %d to %d; re-list and watch from the head: %w",
				re.Asked, re.Oldest, re.Newest, events.ErrCompacted), map[string]string{
				"oldest_sequence": strconv.FormatUint(re.Oldest, 10),
				"newest_sequence": strconv.FormatUint(re.Newest, 10),
			})
		}
		return s.err(err)
	}
	defer w.Close()
	if err := stream.Send(&listenerdv1.WatchEventsResponse{HeadSequence: head, BootId: bus.BootID()}); err != nil {
		return err
	}
	sent := head
	if req.AfterSequence != nil {
		sent = req.GetAfterSequence()
	}
	buf := make([]events.Event, 0, watchBatch)
	for {
		batch, through, err := w.NextBatch(stream.Context(), buf, watchLinger)
		if err != nil {
			if errors.Is(err, events.ErrSlow) {
				return toStatus(s.log, fmt.Errorf("watcher fell behind; resume with after_sequence %d: %w", sent, err),
					map[string]string{"last_sequence": strconv.FormatUint(sent, 10)})
			}
			if errors.Is(err, events.ErrClosed) {
				return toStatus(s.log, fmt.Errorf("listenerd is shutting down: %w", err), nil)
			}
			return s.err(err)
		}
		// A new buffer each time: gRPC may still hold the last one queued
		// after SendMsg returns.
		raw := &rawResponse{b: make([]byte, 0, len(batch)*rawEventSize)}
		for i := range batch {
			if raw.b, err = s.appendEvent(raw.b, &batch[i], bus.BootID(), filter.DataMax); err != nil {
				return s.err(err)
			}
		}
		clear(batch) // hold no connection data while the stream is quiet
		if err := stream.SendMsg(raw); err != nil {
			return err
		}
		sent = through
	}
}

func (s *Service) watchFilter(req *listenerdv1.WatchEventsRequest) (events.Filter, error) {
	var f events.Filter
	if len(req.GetListenerIds()) > maxWatchRefs {
		return f, listener.Invalid("listener_ids", "%d entries, at most %d", len(req.GetListenerIds()), maxWatchRefs)
	}
	for i, id := range req.GetListenerIds() {
		if err := requireID(fmt.Sprintf("listener_ids[%d]", i), id); err != nil {
			return f, err
		}
	}
	if req.GetDataMaxBytes() > events.MaxDataBytes {
		return f, listener.Invalid("data_max_bytes", "%d is out of range 1-%d", req.GetDataMaxBytes(), events.MaxDataBytes)
	}
	if req.GetIncludeData() {
		f.DataMax = int(req.GetDataMaxBytes())
		if f.DataMax == 0 {
			f.DataMax = defaultDataBytes
		}
	}
	for i, k := range req.GetKinds() {
		kind := events.Kind(k)
		if k < 0 || !kind.Valid() {
			return f, listener.Invalid(fmt.Sprintf("kinds[%d]", i), "unknown event kind %d", k)
		}
		f.Kinds = append(f.Kinds, kind)
	}
	var err error
	f.Listeners, err = s.m.Resolve(req.GetListenerIds()) // after the checks: INVALID_ARGUMENT comes first
	return f, err
}
