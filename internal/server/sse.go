package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/grpc-ecosystem/grpc-gateway/v2/utilities"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// eventPayload is the oneof of an Event whose field names its kind.
var eventPayload = (&listenerdv1.Event{}).ProtoReflect().Descriptor().Oneofs().ByName("kind")

// sseJSON writes an event's data: protojson on one line, zeros included.
var sseJSON = protojson.MarshalOptions{EmitDefaultValues: true}

// events serves WatchEvents as server-sent events (GET /v1/events): first
// an "hello" event with the daemon's boot id and head sequence, then each
// event with its sequence as the SSE id and its kind as the SSE event
// name, a comment every sseKeepalive, and, when the watch ends on the
// daemon's side (shutting down, a watcher too slow), a "status" event
// with the gRPC status before the response ends. Errors before the first
// byte are the gateway's JSON errors with their HTTP status.
//
// The query is WatchEventsRequest's (listener_ids and kinds repeated,
// kinds by name with or without EVENT_KIND_, after_sequence, boot_id,
// include_data, data_max_bytes); the Last-Event-ID header, which a
// browser's EventSource sends when it reconnects, is after_sequence. A
// resume point from another boot of the daemon (boot_id not the daemon's,
// or a sequence beyond its head) starts from the new boot's first event
// still held, and the hello's boot id tells the client events were missed.
// A browser's EventSource cannot send headers, so this route also takes
// the token as ?access_token=.
func (s *webServer) events(w http.ResponseWriter, r *http.Request) {
	req, err := watchRequest(r)
	if err != nil {
		runtime.HTTPError(r.Context(), s.gw, s.marshaler, w, r, status.Error(codes.InvalidArgument, err.Error()))
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	if a := authorization(r); a != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", a)
	}
	stream, first, err := s.watch(ctx, req)
	if err != nil {
		runtime.HTTPError(r.Context(), s.gw, s.marshaler, w, r, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // proxies: do not hold events back
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	hello, _ := json.Marshal(struct {
		BootID   string `json:"bootId"`
		Sequence uint64 `json:"sequence"`
	}{first.GetBootId(), first.GetHeadSequence()})
	if writeAll(w, rc, fmt.Appendf(nil, "event: hello\ndata: %s\n\n", hello)) != nil {
		return
	}

	type received struct {
		resp *listenerdv1.WatchEventsResponse
		err  error
	}
	recv := make(chan received)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // before the wait: ends Recv
	wg.Go(func() {
		for {
			resp, err := stream.Recv()
			select {
			case recv <- received{resp, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	})
	tick := time.NewTicker(sseKeepalive)
	defer tick.Stop()
	var buf []byte
	for {
		select {
		case <-ctx.Done(): // the client went away
			return
		case <-s.closing:
			s.endStream(w, rc, status.Error(codes.Unavailable, "listenerd is shutting down"))
			return
		case <-tick.C:
			if writeAll(w, rc, []byte(": keepalive\n\n")) != nil {
				return
			}
		case got := <-recv:
			if got.err != nil {
				s.endStream(w, rc, got.err)
				return
			}
			buf = buf[:0]
			for _, e := range got.resp.GetEvents() {
				if buf, err = appendSSE(buf, e); err != nil {
					s.endStream(w, rc, status.Error(codes.Internal, err.Error()))
					return
				}
			}
			if writeAll(w, rc, buf) != nil {
				return
			}
		}
	}
}

// appendSSE appends e as one server-sent event: its sequence as id, its
// kind (CONNECTION_OPENED, …) as event, and itself as one line of JSON.
func appendSSE(b []byte, e *listenerdv1.Event) ([]byte, error) {
	kind := "UNSPECIFIED"
	if fd := e.ProtoReflect().WhichOneof(eventPayload); fd != nil {
		kind = strings.ToUpper(string(fd.Name()))
	}
	b = fmt.Appendf(b, "id: %d\nevent: %s\ndata: ", e.GetSequence(), kind)
	b, err := sseJSON.MarshalAppend(b, e)
	return append(b, "\n\n"...), err
}

// endStream sends the status a watch ended with as a "status" event; the
// client's EventSource then reconnects with Last-Event-ID.
func (s *webServer) endStream(w http.ResponseWriter, rc *http.ResponseController, err error) {
	st := status.Convert(err)
	if st.Code() == codes.Canceled {
		return
	}
	b, merr := s.marshaler.Marshal(st.Proto())
	if merr != nil {
		return
	}
	_ = writeAll(w, rc, fmt.Appendf(nil, "event: status\ndata: %s\n\n", b))
}

// watch opens the watch and reads its first response (the head and boot
// id). A resume point from another boot starts again from the new boot's
// first event held, or from its head when the history no longer holds
// the first.
func (s *webServer) watch(ctx context.Context, req *listenerdv1.WatchEventsRequest) (grpc.ServerStreamingClient[listenerdv1.WatchEventsResponse], *listenerdv1.WatchEventsResponse, error) {
	stream, first, err := s.open(ctx, req)
	if err == nil || !otherBoot(err, req) {
		return stream, first, err
	}
	req.BootId = ""
	if req.AfterSequence != nil {
		req.AfterSequence = proto.Uint64(0)
		if stream, first, err = s.open(ctx, req); status.Code(err) != codes.OutOfRange {
			return stream, first, err
		}
		req.AfterSequence = nil
	}
	return s.open(ctx, req)
}

func (s *webServer) open(ctx context.Context, req *listenerdv1.WatchEventsRequest) (grpc.ServerStreamingClient[listenerdv1.WatchEventsResponse], *listenerdv1.WatchEventsResponse, error) {
	stream, err := s.client.WatchEvents(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	first, err := stream.Recv()
	if err != nil {
		return nil, nil, err
	}
	return stream, first, nil
}

// otherBoot reports whether a watch was refused for a resume point of
// another boot: its boot_id is not the daemon's, or its sequence is beyond
// the daemon's head.
func otherBoot(err error, req *listenerdv1.WatchEventsRequest) bool {
	st := status.Convert(err)
	if st.Code() != codes.OutOfRange {
		return false
	}
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok {
			continue
		}
		switch info.GetReason() {
		case "BOOT_MISMATCH":
			return true
		case "SEQUENCE_NOT_HELD":
			newest, err := strconv.ParseUint(info.GetMetadata()["newest_sequence"], 10, 64)
			return err == nil && req.AfterSequence != nil && req.GetAfterSequence() > newest
		}
	}
	return false
}

// watchRequest reads the query and Last-Event-ID of GET /v1/events.
func watchRequest(r *http.Request) (*listenerdv1.WatchEventsRequest, error) {
	q := r.URL.Query()
	q.Del("access_token")
	for _, key := range []string{"kinds"} {
		for i, k := range q[key] {
			if _, err := strconv.Atoi(k); err != nil && !strings.HasPrefix(k, "EVENT_KIND_") {
				q[key][i] = "EVENT_KIND_" + strings.ToUpper(k)
			}
		}
	}
	req := &listenerdv1.WatchEventsRequest{}
	if err := runtime.PopulateQueryParameters(req, q, &utilities.DoubleArray{Encoding: map[string]int{}}); err != nil {
		return nil, fmt.Errorf("query: %v", err)
	}
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		n, err := strconv.ParseUint(strings.TrimSpace(id), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("Last-Event-ID %q: not an event sequence", id)
		}
		req.AfterSequence = &n
	}
	return req, nil
}

// authorization is what a call of r sends as its authorization metadata:
// its Authorization header, else its access_token as a bearer token.
func authorization(r *http.Request) string {
	if a := r.Header.Get("Authorization"); a != "" {
		return a
	}
	if t := r.URL.Query().Get("access_token"); t != "" {
		return "Bearer " + t
	}
	return ""
}
