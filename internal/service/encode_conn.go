package service

import (
	"net/netip"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/listenerd/listenerd/internal/events"
)

// Connection opened and closed events are nearly all a busy watch stream
// carries, and building each as a message for proto.Marshal (eventToProto)
// costs about 2 µs. encodeConnEvent writes their wire form directly, field
// by field in field-number order as proto.Marshal does, leaving proto3's
// zero values out. TestEncodeConnEvent holds it to proto.Marshal's output
// for every field.

// Field numbers of listenerd.v1 messages.
const (
	evSequence, evTime, evListenerID, evBootID = 1, 2, 3, 4
	evConnOpened, evConnClosed                 = 11, 12

	connIDField, connTupleField                   = 1, 2 // ConnectionOpened and ConnectionClosed
	closedBytesIn, closedBytesOut, closedDuration = 3, 4, 5
	closedReason, closedError, closedFault        = 6, 7, 8
	tupleRemoteAddr, tupleRemotePort, tupleFamily = 1, 2, 3
	tupleLocalAddr, tupleLocalPort                = 4, 5
	secondsField, nanosField                      = 1, 2 // Timestamp and Duration
)

// isConnEvent reports whether encodeConnEvent handles e.
func isConnEvent(e *events.Event) bool {
	return e.Kind == events.KindConnectionOpened || e.Kind == events.KindConnectionClosed
}

// encodeConnEvent appends the Event message of a connection opened or
// closed event to dst.
func encodeConnEvent(dst []byte, e *events.Event, boot string) []byte {
	var tupleBuf, kindBuf [192]byte
	tuple := appendTuple(tupleBuf[:0], e.Tuple)

	kind := kindBuf[:0]
	if e.Conn != 0 { // e.ConnID(): none for 0
		var id [96]byte
		kind = appendMessage(kind, connIDField, events.AppendConnID(id[:0], e.Listener, e.Conn))
	}
	kind = appendMessage(kind, connTupleField, tuple)
	field := protowire.Number(evConnOpened)
	if e.Kind == events.KindConnectionClosed {
		field = evConnClosed
		kind = appendUint(kind, closedBytesIn, e.BytesIn)
		kind = appendUint(kind, closedBytesOut, e.BytesOut)
		var dur [24]byte
		d := e.Duration
		kind = appendMessage(kind, closedDuration, appendSecondsNanos(dur[:0], int64(d/time.Second), int32(d%time.Second)))
		kind = appendUint(kind, closedReason, uint64(e.Close))
		if e.Detail != nil {
			kind = appendString(kind, closedError, e.Detail.Error)
			if f := e.Detail.Fault; f != nil {
				kind = appendString(kind, closedFault, f.Fault.Name)
			}
		}
	}

	dst = appendUint(dst, evSequence, e.Seq)
	t := time.Unix(0, e.Time)
	var ts [24]byte
	dst = appendMessage(dst, evTime, appendSecondsNanos(ts[:0], t.Unix(), int32(t.Nanosecond())))
	dst = appendString(dst, evListenerID, e.Listener)
	dst = appendString(dst, evBootID, boot)
	return appendMessage(dst, field, kind)
}

// appendTuple appends a FiveTuple message's fields.
func appendTuple(b []byte, t events.Tuple) []byte {
	b = appendAddr(b, tupleRemoteAddr, t.Remote.Addr())
	b = appendUint(b, tupleRemotePort, uint64(t.Remote.Port()))
	b = appendUint(b, tupleFamily, uint64(familyOf(t.Remote.Addr())))
	b = appendAddr(b, tupleLocalAddr, t.Local.Addr())
	return appendUint(b, tupleLocalPort, uint64(t.Local.Port()))
}

// appendAddr appends an address as its String form, as tupleToProto does.
func appendAddr(b []byte, num protowire.Number, a netip.Addr) []byte {
	if !a.IsValid() {
		return appendString(b, num, a.String())
	}
	var buf [64]byte
	return appendMessage(b, num, a.AppendTo(buf[:0]))
}

// appendSecondsNanos appends the fields of a Timestamp or a Duration.
func appendSecondsNanos(b []byte, seconds int64, nanos int32) []byte {
	b = appendUint(b, secondsField, uint64(seconds))
	return appendUint(b, nanosField, uint64(int64(nanos)))
}

// appendUint appends a varint field, left out when zero.
func appendUint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// appendString appends a string field, left out when empty.
func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// appendMessage appends a length-delimited field, present even when empty
// (a set message field).
func appendMessage(b []byte, num protowire.Number, body []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, body)
}
