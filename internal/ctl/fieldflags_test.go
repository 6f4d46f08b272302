package ctl

import (
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// badValues holds, for every flag of ctl listen and ctl limit that sets a
// field of the listener, a value refused for it, by ctl or by the daemon.
// Booleans and counts that take any value get one that does not parse.
var badValues = map[string][]string{
	"port":             {"--port", "70000"},
	"host":             {"--host", "192.0.2.1"}, // TEST-NET-1: not this machine's
	"name":             {"--name", "UPPER"},
	"allow-half-open":  {"--allow-half-open=maybe"},
	"pause-on-connect": {"--pause-on-connect=maybe"},
	"backlog":          {"--backlog", "99999999"},
	"allow":            {"--allow", "1.2.3.4/99"},
	"deny":             {"--deny", "10.0.0.0/8,xx"},
	"no-delay":         {"--no-delay=maybe"},
	"keepalive":        {"--keepalive", "-1s"},
	"fault":            {"--fault", "latency,latency=-1s"},
	"max-connections":  {"--max-connections", "-1"},
	"overflow":         {"--overflow", "sideways"},
	"queue-length":     {"--overflow", "queue", "--queue-length", "70000"},
	"queue-timeout":    {"--overflow", "queue", "--queue-timeout", "-1s"},
	"idle-timeout":     {"--idle-timeout", "-1s"},
	"max-lifetime":     {"--max-lifetime", "-1s"},
	"accept-rate":      {"--accept-rate", "1e12"},
	"accept-burst":     {"--accept-burst", "4000000000"},
	"max-per-source":   {"--max-per-source", "-1"},
	"mode":             {"--mode", "juggle"},
	"upstream":         {"--upstream", "nohost"},
	"claim-timeout":    {"--claim-timeout", "3h"},
}

// notFields are the flags of listen and limit that set no field of the
// listener.
var notFields = []string{"follow", "data", "unlimited", "help"}

// For every flag of listen and limit that sets a field of the listener, a
// bad value's error names that flag, whether ctl or the daemon (a real one)
// refuses it. A flag added without an annotation or a case here fails.
func TestErrorsNameTheFlag(t *testing.T) {
	d := startDaemon(t)
	id := listenID(t, d.sock, "--name", "target")
	a := newApp(nil, nil)
	for _, cmd := range [][]string{{"listen"}, {"limit", id}} {
		c, _, err := a.rootCmd().Find(cmd[:1])
		if err != nil {
			t.Fatal(err)
		}
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if slices.Contains(notFields, f.Name) {
				return
			}
			if len(f.Annotations[fieldAnnotation]) != 1 {
				t.Errorf("ctl %s --%s: no field annotation", cmd[0], f.Name)
			}
			bad, ok := badValues[f.Name]
			if !ok {
				t.Errorf("ctl %s --%s: no bad value to try", cmd[0], f.Name)
				return
			}
			r := runCtl(t, d.sock, append(slices.Clone(cmd), bad...)...)
			if r.code != ExitUsage || !strings.Contains(r.stderr, "--"+f.Name) || strings.Contains(r.stderr, "spec.") {
				t.Errorf("ctl %s %v: exit %d, stderr %q; want exit 2 naming --%s", cmd[0], bad, r.code, r.stderr, f.Name)
			}
		})
	}
	// The listener was left as it was, and nothing else was created.
	if r := runCtl(t, d.sock, "ls", "--no-headers"); strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("ls after the refusals:\n%s", r.stdout)
	}
}

// A daemon's error about a field no flag sets is left as it is.
func TestFlagForNearestField(t *testing.T) {
	a := newApp(nil, nil)
	c, _, err := a.rootCmd().Find([]string{"listen"})
	if err != nil {
		t.Fatal(err)
	}
	for field, want := range map[string]string{
		"spec.allow_cidrs[3]":             "allow",
		"spec.faults[0].latency":          "fault",
		"spec.handler.forward.upstream":   "upstream",
		"spec.handler.echo":               "mode",
		"spec.limits.max_connections":     "max-connections",
		"spec":                            "",
		"update_mask":                     "",
		"spec.limits.accept_burst_future": "",
	} {
		if got := flagFor(c.Flags(), field); got != want {
			t.Errorf("flagFor(%q) = %q, want %q", field, got, want)
		}
	}
}
