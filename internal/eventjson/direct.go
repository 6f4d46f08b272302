package eventjson

import (
	"net/netip"
	"time"
	"unicode/utf8"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/events"
)

// AppendEvent appends the API's Event for e (as the service's
// eventToProto builds it, connection data left out) as compact protojson,
// straight from the bus's event: the fleet publisher's payload, without
// building the message first. It handles the connection kinds Append
// handles but data; ok is false for the others, and for a value protojson
// refuses (invalid UTF-8): the caller then builds the message.
// service's TestAppendEventDirect holds it to that path's bytes.
func AppendEvent(dst []byte, e *events.Event, boot string) (_ []byte, ok bool) {
	switch e.Kind {
	case events.KindConnectionOpened, events.KindConnectionClosed, events.KindConnectionRejected,
		events.KindConnectionQueued, events.KindConnectionHalfClosed:
	default:
		return dst, false
	}
	d := e.Detail
	if d == nil {
		d = &noDetail
	}
	o := jsonOut{b: dst}
	o.open()
	o.u64("sequence", e.Seq)
	t := time.Unix(0, e.Time)
	o.timeParts("time", t.Unix(), int64(t.Nanosecond()))
	o.str("listenerId", e.Listener)
	o.str("bootId", boot)
	switch e.Kind {
	case events.KindConnectionOpened:
		o.sub("connectionOpened")
		o.connID(e)
		o.eventTuple(e.Tuple)
		o.close()
	case events.KindConnectionClosed:
		o.sub("connectionClosed")
		o.connID(e)
		o.eventTuple(e.Tuple)
		o.u64("bytesIn", e.BytesIn)
		o.u64("bytesOut", e.BytesOut)
		o.durationParts("duration", int64(e.Duration/time.Second), int64(e.Duration%time.Second))
		o.enum("reason", int32(e.Close), listenerdv1.CloseReason_name)
		o.str("error", d.Error)
		o.str("fault", faultName(d))
		o.close()
	case events.KindConnectionRejected:
		o.sub("connectionRejected")
		o.eventTuple(e.Tuple)
		o.enum("reason", int32(e.Reject), listenerdv1.RejectReason_name)
		o.connID(e)
		if e.Conn != 0 { // it waited in the queue
			o.durationParts("queueWait", int64(e.Duration/time.Second), int64(e.Duration%time.Second))
		}
		o.str("fault", faultName(d))
		o.close()
	case events.KindConnectionQueued:
		o.sub("connectionQueued")
		o.connID(e)
		o.eventTuple(e.Tuple)
		o.u32("position", uint32(d.Position))
		o.close()
	case events.KindConnectionHalfClosed:
		o.sub("connectionHalfClosed")
		o.connID(e)
		o.close()
	}
	o.close()
	if o.refused {
		return dst, false
	}
	return o.b, true
}

var noDetail events.Detail

func faultName(d *events.Detail) string {
	if d.Fault == nil {
		return ""
	}
	return d.Fault.Fault.Name
}

// connID writes e's connectionId, none for connection 0.
func (o *jsonOut) connID(e *events.Event) {
	if e.Conn == 0 {
		return
	}
	var buf [96]byte
	id := events.AppendConnID(buf[:0], e.Listener, e.Conn)
	if !utf8.Valid(id) {
		o.refused = true
		return
	}
	o.key("connectionId")
	o.b = appendJSONString(o.b, id)
}

// eventTuple writes the tuple as the service's tupleToProto builds it:
// always present, the family by the remote address.
func (o *jsonOut) eventTuple(t events.Tuple) {
	o.sub("tuple")
	o.addr("remoteAddress", t.Remote.Addr())
	o.u32("remotePort", uint32(t.Remote.Port()))
	family := listenerdv1.Family_FAMILY_IPV6
	if t.Remote.Addr().Is4() {
		family = listenerdv1.Family_FAMILY_IPV4
	}
	o.enum("family", int32(family), listenerdv1.Family_name)
	o.addr("localAddress", t.Local.Addr())
	o.u32("localPort", uint32(t.Local.Port()))
	o.close()
}

// addr writes an address as its String form.
func (o *jsonOut) addr(k string, a netip.Addr) {
	if !a.IsValid() {
		o.str(k, a.String())
		return
	}
	var buf [64]byte
	s := a.AppendTo(buf[:0])
	if !utf8.Valid(s) { // a zone is any string
		o.refused = true
		return
	}
	o.key(k)
	o.b = appendJSONString(o.b, s)
}
