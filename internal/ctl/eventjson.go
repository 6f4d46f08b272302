package ctl

import (
	"bufio"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/eventjson"
)

// writeEventJSON writes ev as writeJSON does, one protojson line, through
// eventjson's fast path when it can (protojson cost ctl watch -o json more
// CPU than the daemon serving the connections).
// TestEventJSONMatchesProtojson holds the two to the same bytes. It
// appends straight into w's free buffer.
func writeEventJSON(w *bufio.Writer, ev *listenerdv1.Event) error {
	b, ok := eventjson.Append(w.AvailableBuffer(), ev)
	if !ok {
		return writeJSON(w, ev)
	}
	_, err := w.Write(append(b, '\n'))
	return err
}

// appendEventJSON is eventjson.Append, for the tests that hold it to
// protojson's bytes.
var appendEventJSON = eventjson.Append
