package listener

import (
	"encoding/json"
	"testing"
)

// FuzzRecords feeds arbitrary saved records to the restore validation: it
// never panics, and a record it accepts round-trips.
func FuzzRecords(f *testing.F) {
	f.Add([]byte(`{"id":"ln-00000001","name":"web","create_time":"2026-01-01T00:00:00Z","spec":{"handler":"echo","max_connections":-1}}`))
	f.Add([]byte(`{"id":"ln-00000001","spec":{"handler":"forward","upstream":"127.0.0.1:1","max_connections":5,"allow_cidrs":["10.0.0.0/8"]}}`))
	f.Add([]byte(`{"id":"x"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		raws := []json.RawMessage{data}
		if ValidateRecords(raws) != nil {
			return
		}
		r, spec, err := fromRecord(data)
		if err != nil {
			t.Fatalf("validated record does not decode: %v", err)
		}
		l := &Listener{id: r.ID, name: r.Name, spec: spec, created: r.Created, boundPort: r.BoundPort}
		l.storeLimits(spec.Limits)
		again, err := json.Marshal(toRecord(l))
		if err != nil {
			t.Fatal(err)
		}
		if err := ValidateRecords([]json.RawMessage{again}); err != nil {
			t.Fatalf("re-encoded record refused: %v\n%s", err, again)
		}
	})
}
