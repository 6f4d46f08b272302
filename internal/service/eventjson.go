package service

import (
	"github.com/listenerd/listenerd/internal/eventjson"
	"github.com/listenerd/listenerd/internal/events"
)

// EventJSON is e as the API's Event in compact protojson, one line without
// its newline: what ctl watch -o json prints for it, and the payload of
// the fleet's JetStream messages. Connection data is left out.
func EventJSON(e *events.Event, boot string) ([]byte, error) {
	return eventjson.Marshal(eventToProto(e, boot, 0))
}
