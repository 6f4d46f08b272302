package service

import (
	"bytes"
	"encoding/json"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/listenerd/listenerd/internal/events"
)

// EventJSON is e as the API's Event in compact protojson, one line without
// its newline: what ctl watch -o json prints for it, and the payload of
// the fleet's JetStream messages. Connection data is left out.
func EventJSON(e *events.Event, boot string) ([]byte, error) {
	b, err := protojson.Marshal(eventToProto(e, boot, 0))
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
