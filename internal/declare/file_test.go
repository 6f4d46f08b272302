package declare

import (
	"os"
	"strings"
	"testing"
)

func TestParseContribExample(t *testing.T) {
	set, err := ReadFile("../../contrib/listeners.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range set.Entries {
		names = append(names, e.Name)
	}
	if strings.Join(names, ",") != "chat,proxy,web" || set.Drain.String() != "5s" {
		t.Fatalf("entries %v, drain %v", names, set.Drain)
	}
	proxy := set.Entries[1].Spec
	if proxy.GetLimits().GetIdleTimeout().AsDuration().String() != "5m0s" || proxy.GetHandler().GetForward().GetUpstream() != "127.0.0.1:443" {
		t.Errorf("proxy spec %v", proxy)
	}
	if set.Entries[0].Drain.String() != "30s" || set.Entries[2].Drain.String() != "5s" {
		t.Errorf("drains %v %v", set.Entries[0].Drain, set.Entries[2].Drain)
	}
}

func TestParseEmpty(t *testing.T) {
	for _, text := range []string{"", "# nothing\n", "listeners:\n", "listeners: {}\n"} {
		set, err := Parse("l.yaml", []byte(text))
		if err != nil || len(set.Entries) != 0 {
			t.Errorf("%q: %v, %v", text, set, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"listeners: [", "l.yaml:1:"},
		{"listener: {}\n", `l.yaml:1:1: unknown key "listener" (want listeners or drainTimeout)`},
		{"listeners:\n  web:\n    spec: {port: 1}\n  web:\n    spec: {port: 2}\n", `l.yaml:4:3: mapping key "web" already defined at [2:3]`},
		{"listeners:\n  web:\n    spec: {port: 1}\n    drain: 5s\n", `l.yaml:4:5: listener "web": unknown key "drain" (want spec or drainTimeout)`},
		{"listeners:\n  web:\n    spec: {prot: 1}\n", `l.yaml:3:11: listener "web": spec: unknown field "prot"`},
		{"listeners:\n  web:\n    spec: {port: 70000}\n", `l.yaml:3:11: listener "web": spec.port: 70000 is out of range 0-65535`},
		{"listeners:\n  web:\n    spec: {limits: {maxConnectionsPerSource: 0}}\n", `listener "web": spec.limits.max_connections_per_source: must be at least 1`},
		{"listeners:\n  web:\n    spec: {denyCidrs: [10.1.2.3/8]}\n", `listener "web": spec.deny_cidrs[0]:`},
		{"listeners:\n  Web!:\n    spec: {}\n", `l.yaml:2:3: listener "Web!": name:`},
		{"listeners:\n  web:\n", `l.yaml:2:3: listener "web": no spec`},
		{"listeners:\n  web: {drainTimeout: 1s}\n", `listener "web": no spec`},
		{"drainTimeout: soon\n", `l.yaml:1:15: drainTimeout: "soon" is not a duration`},
		{"listeners:\n  web:\n    spec: &a {port: 1}\n  app:\n    spec: *a\n", `is not allowed here`},
		{"listeners: {}\n---\nlisteners: {}\n", "one YAML document only"},
	} {
		_, err := Parse("l.yaml", []byte(tc.text))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.text, err, tc.want)
		}
	}
}

func TestReadFileMissing(t *testing.T) {
	if _, err := ReadFile(t.TempDir() + "/none.yaml"); !os.IsNotExist(err) {
		t.Errorf("error %v, want not exist", err)
	}
}
