package service

import (
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/listenerd/listenerd/internal/events"
)

// Every watcher sends the same events, so each event is encoded once and
// its wire bytes shared: a WatchEventsResponse is, on the wire, its events
// field repeated, which the watch handler assembles from the cached bytes.
// The codec below passes such pre-encoded responses through unchanged and
// hands everything else to the proto codec.

// ServerOption installs the codec WatchEvents needs; every grpc.Server that
// registers this service must be created with it.
func ServerOption() grpc.ServerOption {
	return grpc.ForceServerCodecV2(codec{encoding.GetCodecV2("proto")})
}

// rawResponse is a WatchEventsResponse already in wire format.
type rawResponse struct{ b []byte }

type codec struct{ proto encoding.CodecV2 }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(*rawResponse); ok {
		return mem.BufferSlice{mem.SliceBuffer(r.b)}, nil
	}
	return c.proto.Marshal(v)
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error { return c.proto.Unmarshal(data, v) }

func (c codec) Name() string { return c.proto.Name() }

// encCacheSize is how many recent events keep their encoding: watchers that
// are close to the head (the common case) find theirs here.
const encCacheSize = 1 << 14

type encoded struct {
	seq uint64
	b   []byte
}

// encCache holds the wire bytes of recent events, by sequence. Concurrent
// watchers may both encode an event; either result is the same.
type encCache struct {
	slots [encCacheSize]atomic.Pointer[encoded]
}

// rawEventSize is a typical encoded connection event, to size buffers.
const rawEventSize = 160

// eventsField is the field number of WatchEventsResponse.events.
const eventsField = 1

// appendEvent appends e as one WatchEventsResponse.events entry.
func (s *Service) appendEvent(dst []byte, e *events.Event, boot string, dataMax int) ([]byte, error) {
	var b []byte
	if e.Kind == events.KindConnectionData {
		// Cut to each watcher's own data cap: not shared.
		var err error
		if b, err = proto.Marshal(eventToProto(e, boot, dataMax)); err != nil {
			return dst, err
		}
	} else {
		slot := &s.enc.slots[e.Seq%encCacheSize]
		if p := slot.Load(); p != nil && p.seq == e.Seq {
			b = p.b
		} else {
			if isConnEvent(e) {
				b = encodeConnEvent(make([]byte, 0, rawEventSize), e, boot)
			} else {
				var err error
				if b, err = proto.Marshal(eventToProto(e, boot, dataMax)); err != nil {
					return dst, err
				}
			}
			slot.Store(&encoded{seq: e.Seq, b: b})
		}
	}
	dst = protowire.AppendTag(dst, eventsField, protowire.BytesType)
	return protowire.AppendBytes(dst, b), nil
}
