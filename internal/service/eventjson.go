package service

import (
	"github.com/listenerd/listenerd/internal/eventjson"
	"github.com/listenerd/listenerd/internal/events"
)

// AppendEventJSON appends e as the API's Event in compact protojson, one
// line without its newline, to dst: what ctl watch -o json prints for it,
// and the payload of the fleet's JetStream messages. Connection data is
// left out. The connection kinds are written straight from e
// (eventjson.AppendEvent); the rest, and values protojson refuses, go
// through the API message (eventToProto).
func AppendEventJSON(dst []byte, e *events.Event, boot string) ([]byte, error) {
	if b, ok := eventjson.AppendEvent(dst, e, boot); ok {
		return b, nil
	}
	return appendEventJSONViaProto(dst, e, boot)
}

// appendEventJSONViaProto is AppendEventJSON through the API message.
func appendEventJSONViaProto(dst []byte, e *events.Event, boot string) ([]byte, error) {
	ev := eventToProto(e, boot, 0)
	if b, ok := eventjson.Append(dst, ev); ok {
		return b, nil
	}
	b, err := eventjson.Marshal(ev)
	if err != nil {
		return dst, err
	}
	return append(dst, b...), nil
}
