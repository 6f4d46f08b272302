// Package eventjson spells an API Event as compact protojson without
// going through protojson for the kinds a busy listener streams
// (connections opened, queued, closed, rejected, half-closed, and their
// data): protojson takes about 9 µs an event on the project's test VM,
// which made ctl watch -o json cost more CPU than the daemon serving the
// connections, and the fleet's publishing cost the accept rate. ctl's
// TestEventJSONMatchesProtojson holds the two to the same bytes.
package eventjson

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math/bits"
	"strconv"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// Marshal is ev as compact protojson on one line, without its newline:
// Append's when it can, else protojson's, compacted.
func Marshal(ev *listenerdv1.Event) ([]byte, error) {
	if b, ok := Append(nil, ev); ok {
		return b, nil
	}
	b, err := protojson.Marshal(ev)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	// protojson may vary its whitespace: compact it to one stable line.
	if err := json.Compact(&buf, b); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Append appends ev as compact protojson. ok is false for the
// other kinds, and for any value protojson refuses (invalid UTF-8, a time
// out of range) or spells in a way this does not: the caller then uses
// protojson itself.
func Append(dst []byte, ev *listenerdv1.Event) (_ []byte, ok bool) {
	o := jsonOut{b: dst}
	o.open()
	o.u64("sequence", ev.GetSequence())
	o.timestamp("time", ev.GetTime())
	o.str("listenerId", ev.GetListenerId())
	o.str("bootId", ev.GetBootId())
	// A oneof case holding no message (never so off the wire) is left to
	// protojson.
	switch k := ev.GetKind().(type) {
	case nil:
	case *listenerdv1.Event_ConnectionOpened:
		if k == nil || k.ConnectionOpened == nil {
			return dst, false
		}
		c := k.ConnectionOpened
		o.sub("connectionOpened")
		o.str("connectionId", c.GetConnectionId())
		o.tuple("tuple", c.GetTuple())
		o.close()
	case *listenerdv1.Event_ConnectionClosed:
		if k == nil || k.ConnectionClosed == nil {
			return dst, false
		}
		c := k.ConnectionClosed
		o.sub("connectionClosed")
		o.str("connectionId", c.GetConnectionId())
		o.tuple("tuple", c.GetTuple())
		o.u64("bytesIn", c.GetBytesIn())
		o.u64("bytesOut", c.GetBytesOut())
		o.duration("duration", c.GetDuration())
		o.enum("reason", int32(c.GetReason()), listenerdv1.CloseReason_name)
		o.str("error", c.GetError())
		o.str("fault", c.GetFault())
		o.close()
	case *listenerdv1.Event_ConnectionRejected:
		if k == nil || k.ConnectionRejected == nil {
			return dst, false
		}
		c := k.ConnectionRejected
		o.sub("connectionRejected")
		o.tuple("tuple", c.GetTuple())
		o.enum("reason", int32(c.GetReason()), listenerdv1.RejectReason_name)
		o.str("connectionId", c.GetConnectionId())
		o.duration("queueWait", c.GetQueueWait())
		o.str("fault", c.GetFault())
		o.close()
	case *listenerdv1.Event_ConnectionQueued:
		if k == nil || k.ConnectionQueued == nil {
			return dst, false
		}
		c := k.ConnectionQueued
		o.sub("connectionQueued")
		o.str("connectionId", c.GetConnectionId())
		o.tuple("tuple", c.GetTuple())
		o.u32("position", c.GetPosition())
		o.close()
	case *listenerdv1.Event_ConnectionHalfClosed:
		if k == nil || k.ConnectionHalfClosed == nil {
			return dst, false
		}
		o.sub("connectionHalfClosed")
		o.str("connectionId", k.ConnectionHalfClosed.GetConnectionId())
		o.close()
	case *listenerdv1.Event_ConnectionData:
		if k == nil || k.ConnectionData == nil {
			return dst, false
		}
		c := k.ConnectionData
		o.sub("connectionData")
		o.str("connectionId", c.GetConnectionId())
		o.enum("direction", int32(c.GetDirection()), listenerdv1.Direction_name)
		o.bytes("data", c.GetData())
		o.u64("length", c.GetLength())
		o.close()
	default:
		return dst, false
	}
	o.close()
	return o.b, !o.refused
}

// jsonOut appends one JSON object as protojson spells it: fields in
// declaration order, zero values left out, 64-bit integers quoted, enums
// by name.
type jsonOut struct {
	b       []byte
	first   bool // no field yet in the object being written
	refused bool // a value protojson refuses or spells otherwise
}

func (o *jsonOut) open()  { o.b, o.first = append(o.b, '{'), true }
func (o *jsonOut) close() { o.b, o.first = append(o.b, '}'), false }

func (o *jsonOut) key(k string) {
	if !o.first {
		o.b = append(o.b, ',')
	}
	o.first = false
	o.b = append(o.b, '"')
	o.b = append(o.b, k...)
	o.b = append(o.b, '"', ':')
}

// sub opens the object of a message field.
func (o *jsonOut) sub(k string) {
	o.key(k)
	o.open()
}

func (o *jsonOut) str(k, v string) {
	if v == "" {
		return
	}
	if !utf8.ValidString(v) {
		o.refused = true
		return
	}
	o.key(k)
	o.b = appendJSONString(o.b, v)
}

func (o *jsonOut) u64(k string, v uint64) {
	if v != 0 {
		o.key(k)
		o.b = append(o.b, '"')
		o.b = strconv.AppendUint(o.b, v, 10)
		o.b = append(o.b, '"')
	}
}

func (o *jsonOut) u32(k string, v uint32) {
	if v != 0 {
		o.key(k)
		o.b = strconv.AppendUint(o.b, uint64(v), 10)
	}
}

// enum writes an enum by name, or by number when the name is unknown.
func (o *jsonOut) enum(k string, v int32, names map[int32]string) {
	if v == 0 {
		return
	}
	o.key(k)
	if name, ok := names[v]; ok {
		o.b = append(o.b, '"')
		o.b = append(o.b, name...)
		o.b = append(o.b, '"')
		return
	}
	o.b = strconv.AppendInt(o.b, int64(v), 10)
}

func (o *jsonOut) bytes(k string, v []byte) {
	if len(v) != 0 {
		o.key(k)
		o.b = append(o.b, '"')
		o.b = base64.StdEncoding.AppendEncode(o.b, v)
		o.b = append(o.b, '"')
	}
}

func (o *jsonOut) tuple(k string, t *listenerdv1.FiveTuple) {
	if t == nil {
		return
	}
	o.sub(k)
	o.str("remoteAddress", t.GetRemoteAddress())
	o.u32("remotePort", t.GetRemotePort())
	o.enum("family", int32(t.GetFamily()), listenerdv1.Family_name)
	o.str("localAddress", t.GetLocalAddress())
	o.u32("localPort", t.GetLocalPort())
	o.close()
}

// protojson's bounds of google.protobuf.Timestamp and Duration.
const (
	minTimestampSeconds = -62135596800
	maxTimestampSeconds = 253402300799
	maxDurationSeconds  = 315576000000
	maxNanos            = 999999999
)

// timestamp writes RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits.
func (o *jsonOut) timestamp(k string, t *timestamppb.Timestamp) {
	if t == nil {
		return
	}
	o.timeParts(k, t.GetSeconds(), int64(t.GetNanos()))
}

// timeParts writes a Timestamp of secs and nanos.
func (o *jsonOut) timeParts(k string, secs, nanos int64) {
	if secs < minTimestampSeconds || secs > maxTimestampSeconds || nanos < 0 || nanos > maxNanos {
		o.refused = true
		return
	}
	o.key(k)
	o.b = append(o.b, '"')
	o.b = appendDateTime(o.b, time.Unix(secs, 0).UTC())
	o.b = appendFraction(o.b, nanos)
	o.b = append(o.b, 'Z', '"')
}

// appendDateTime appends t as "2006-01-02T15:04:05", its year within 1
// and 9999 (the Timestamp's bounds): AppendFormat's output, without its
// layout parsing.
func appendDateTime(b []byte, t time.Time) []byte {
	y, mo, d := t.Date()
	h, mi, s := t.Clock()
	b = append(b, byte('0'+y/1000), byte('0'+y/100%10), byte('0'+y/10%10), byte('0'+y%10), '-')
	b = append(b, byte('0'+mo/10), byte('0'+mo%10), '-', byte('0'+d/10), byte('0'+d%10), 'T')
	return append(b, byte('0'+h/10), byte('0'+h%10), ':', byte('0'+mi/10), byte('0'+mi%10), ':', byte('0'+s/10), byte('0'+s%10))
}

// duration writes seconds with 0, 3, 6 or 9 fractional digits and "s".
func (o *jsonOut) duration(k string, d *durationpb.Duration) {
	if d == nil {
		return
	}
	o.durationParts(k, d.GetSeconds(), int64(d.GetNanos()))
}

// durationParts writes a Duration of secs and nanos.
func (o *jsonOut) durationParts(k string, secs, nanos int64) {
	if secs < -maxDurationSeconds || secs > maxDurationSeconds || nanos < -maxNanos || nanos > maxNanos ||
		(secs > 0 && nanos < 0) || (secs < 0 && nanos > 0) {
		o.refused = true
		return
	}
	o.key(k)
	o.b = append(o.b, '"')
	if secs < 0 || nanos < 0 {
		o.b = append(o.b, '-')
		secs, nanos = -secs, -nanos
	}
	o.b = strconv.AppendInt(o.b, secs, 10)
	o.b = appendFraction(o.b, nanos)
	o.b = append(o.b, 's', '"')
}

// appendFraction appends ".ddddddddd" for nanos, cut to 3 or 6 digits when
// the rest are zeros, and nothing for 0.
func appendFraction(b []byte, nanos int64) []byte {
	if nanos == 0 {
		return b
	}
	digits := 9
	for range 2 {
		if nanos%1000 != 0 {
			break
		}
		nanos /= 1000
		digits -= 3
	}
	b = append(b, '.')
	var tmp [10]byte
	s := strconv.AppendInt(tmp[:0], nanos, 10)
	for range digits - len(s) {
		b = append(b, '0')
	}
	return append(b, s...)
}

// appendJSONString quotes valid UTF-8 as protojson does: only '"', '\\'
// and control characters are escaped.
func appendJSONString[T string | []byte](b []byte, s T) []byte {
	b = append(b, '"')
	i := 0
	for i < len(s) && s[i] >= ' ' && s[i] != '"' && s[i] != '\\' {
		i++
	}
	b = append(b, s[:i]...)
	for ; i < len(s); i++ {
		c := s[i]
		if c >= ' ' && c != '"' && c != '\\' {
			b = append(b, c)
			continue
		}
		b = append(b, '\\')
		switch c {
		case '"', '\\':
			b = append(b, c)
		case '\b':
			b = append(b, 'b')
		case '\f':
			b = append(b, 'f')
		case '\n':
			b = append(b, 'n')
		case '\r':
			b = append(b, 'r')
		case '\t':
			b = append(b, 't')
		default:
			b = append(b, 'u')
			b = append(b, "0000"[1+(bits.Len32(uint32(c))-1)/4:]...)
			b = strconv.AppendUint(b, uint64(c), 16)
		}
	}
	return append(b, '"')
}
