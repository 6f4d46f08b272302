package service

import (
	"strings"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

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

// Unmarshal decodes a request. A string field that is not valid UTF-8
// fails the proto codec, and gRPC answers any codec failure INTERNAL,
// naming no field. Such a request is decoded again with each bad string
// made valid (U+FFFD for each bad byte sequence), so that the field's own
// check refuses it as INVALID_ARGUMENT, by name.
func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.proto.Unmarshal(data, v)
	m, ok := v.(proto.Message)
	if err == nil || !ok || !strings.Contains(err.Error(), "invalid UTF-8") {
		return err
	}
	b := data.Materialize()
	fixed, ok := validStrings(b, m.ProtoReflect().Descriptor())
	if !ok {
		return err
	}
	return proto.Unmarshal(fixed, m)
}

// validStrings re-encodes the message b of type md with every string field,
// nested ones included, made valid UTF-8. It reports false for bytes that
// are not a message.
func validStrings(b []byte, md protoreflect.MessageDescriptor) ([]byte, bool) {
	out := make([]byte, 0, len(b))
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		fd := md.Fields().ByNumber(num)
		if typ != protowire.BytesType || fd == nil || fd.Kind() != protoreflect.StringKind && fd.Kind() != protoreflect.MessageKind {
			m := protowire.ConsumeFieldValue(num, typ, b[n:])
			if m < 0 {
				return nil, false
			}
			out, b = append(out, b[:n+m]...), b[n+m:]
			continue
		}
		v, m := protowire.ConsumeBytes(b[n:])
		if m < 0 {
			return nil, false
		}
		b = b[n+m:]
		if fd.Kind() == protoreflect.StringKind {
			v = []byte(strings.ToValidUTF8(string(v), "\uFFFD"))
		} else {
			var ok bool
			if v, ok = validStrings(v, fd.Message()); !ok {
				return nil, false
			}
		}
		out = protowire.AppendTag(out, num, typ)
		out = protowire.AppendBytes(out, v)
	}
	return out, true
}

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
