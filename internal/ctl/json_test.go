package ctl

import (
	"encoding/json"
	"strings"
	"testing"
)

// decodeOne decodes out as exactly one JSON document: one value, nothing
// after it but the final newline.
func decodeOne(t *testing.T, what, out string, v any) {
	t.Helper()
	if strings.Count(out, "\n") != 1 || !strings.HasSuffix(out, "\n") {
		t.Fatalf("%s: want one line, got %q", what, out)
	}
	dec := json.NewDecoder(strings.NewReader(out))
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v in %q", what, err, out)
	}
	if dec.More() {
		t.Fatalf("%s: more than one JSON document in %q", what, out)
	}
}

// Every command that answers once prints one JSON document with -o json,
// its zero counts written out, against a real daemon.
func TestJSONIsOneDocument(t *testing.T) {
	d := startDaemon(t)
	for _, name := range []string{"a", "b"} {
		if r := runCtl(t, d.sock, "listen", "--name", name, "--mode", "echo", "-o", "json"); r.code != ExitOK {
			t.Fatalf("listen: exit %d, %q", r.code, r.stderr)
		}
	}

	r := runCtl(t, d.sock, "ls", "-o", "json")
	var ls struct {
		Listeners []map[string]any `json:"listeners"`
		Sequence  *string          `json:"sequence"`
	}
	decodeOne(t, "ls", r.stdout, &ls)
	if r.code != ExitOK || len(ls.Listeners) != 2 || ls.Sequence == nil {
		t.Fatalf("ls -o json: exit %d, %+v from %q", r.code, ls, r.stdout)
	}
	st, _ := ls.Listeners[0]["status"].(map[string]any)
	for _, k := range []string{"activeConnections", "acceptedConnections", "rejectedConnections", "bytesIn", "bytesOut"} {
		if st[k] != "0" {
			t.Errorf("ls -o json: status.%s = %v, want \"0\" in %q", k, st[k], r.stdout)
		}
	}

	r = runCtl(t, d.sock, "get", "a", "-o", "json")
	var get map[string]any
	decodeOne(t, "get", r.stdout, &get)
	if get["name"] != "a" || get["status"].(map[string]any)["activeConnections"] != "0" {
		t.Errorf("get -o json: %q", r.stdout)
	}

	r = runCtl(t, d.sock, "conns", "a", "-o", "json")
	var conns map[string]any
	decodeOne(t, "conns", r.stdout, &conns)
	if c, ok := conns["connections"].([]any); !ok || len(c) != 0 {
		t.Errorf("conns -o json: want an empty connections array, got %q", r.stdout)
	}

	r = runCtl(t, d.sock, "fault", "ls", "a", "-o", "json")
	var faults map[string]any
	decodeOne(t, "fault ls", r.stdout, &faults)
	if f, ok := faults["faults"].([]any); !ok || len(f) != 0 {
		t.Errorf("fault ls -o json: want an empty faults array, got %q", r.stdout)
	}

	r = runCtl(t, d.sock, "limit", "a", "--max-connections", "0", "-o", "json")
	var lim map[string]any
	decodeOne(t, "limit", r.stdout, &lim)
	if lim["spec"].(map[string]any)["limits"].(map[string]any)["maxConnections"] != float64(0) {
		t.Errorf("limit -o json: maxConnections 0 missing in %q", r.stdout)
	}

	r = runCtl(t, d.sock, "close", "b", "-o", "json")
	var closed map[string]any
	decodeOne(t, "close", r.stdout, &closed)
	if closed["id"] == "" {
		t.Errorf("close -o json: %q", r.stdout)
	}
}
