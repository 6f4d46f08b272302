package ctl

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// limitValues are a value to give each limit flag in the tests below.
var limitValues = map[string]string{
	"max-connections": "7",
	"overflow":        "queue",
	"queue-length":    "64",
	"queue-timeout":   "2s",
	"idle-timeout":    "30s",
	"max-lifetime":    "1h",
	"accept-rate":     "2.5",
	"accept-burst":    "4",
	"max-per-source":  "3",
}

// parseListen and parseLimit build the requests of ctl listen and ctl limit
// from args.
func parseListen(t *testing.T, args ...string) (*listenerdv1.CreateListenerRequest, error) {
	t.Helper()
	var o listenOptions
	fs := pflag.NewFlagSet("listen", pflag.ContinueOnError)
	o.addFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return o.request(fs)
}

func parseLimit(t *testing.T, args ...string) (*listenerdv1.UpdateListenerRequest, error) {
	t.Helper()
	var o limitOptions
	fs := pflag.NewFlagSet("limit", pflag.ContinueOnError)
	o.addFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return o.request("web", fs)
}

// ctl listen and ctl limit take the same limit flags, with the same help,
// and each builds the same Limits from them; limit names each in its mask.
func TestLimitFlagsShared(t *testing.T) {
	listenFS, limitFS := pflag.NewFlagSet("listen", pflag.ContinueOnError), pflag.NewFlagSet("limit", pflag.ContinueOnError)
	(&listenOptions{}).addFlags(listenFS)
	(&limitOptions{}).addFlags(limitFS)
	for _, s := range limitSetters {
		a, b := listenFS.Lookup(s.flag), limitFS.Lookup(s.flag)
		if a == nil || b == nil {
			t.Fatalf("--%s: listen has it: %v, limit has it: %v", s.flag, a != nil, b != nil)
		}
		if a.Usage != b.Usage || a.Value.Type() != b.Value.Type() {
			t.Errorf("--%s differs: %q (%s) and %q (%s)", s.flag, a.Usage, a.Value.Type(), b.Usage, b.Value.Type())
		}
		v, ok := limitValues[s.flag]
		if !ok {
			t.Fatalf("--%s: give it a value in limitValues", s.flag)
		}
		args, mask := []string{"--" + s.flag, v}, []string{s.path}
		if strings.HasPrefix(s.flag, "queue-") { // needs --overflow queue on listen
			args, mask = append(args, "--overflow", "queue"), []string{"spec.limits.overflow", s.path}
		}
		create, err := parseListen(t, args...)
		if err != nil {
			t.Fatalf("listen %v: %v", args, err)
		}
		update, err := parseLimit(t, args...)
		if err != nil {
			t.Fatalf("limit %v: %v", args, err)
		}
		assertProto(t, create.GetSpec().GetLimits(), update.GetListener().GetSpec().GetLimits())
		if create.GetSpec().GetLimits() == nil {
			t.Errorf("listen %v sent no limits", args)
		}
		if got := update.GetUpdateMask().GetPaths(); !slices.Equal(got, mask) {
			t.Errorf("limit %v: mask %v, want %v", args, got, mask)
		}
	}
	// Both refuse a bad value the same way.
	for _, args := range [][]string{{"--overflow", "drop"}, {"--accept-rate", "-1"}} {
		_, err := parseListen(t, args...)
		assertUsage(t, err)
		_, err = parseLimit(t, args...)
		assertUsage(t, err)
	}
}

// Every limit flag at once, in one request of each command; the mask
// follows the order of the fields whatever the order of the flags.
func TestLimitFlagsAll(t *testing.T) {
	var args []string
	for i := len(limitSetters) - 1; i >= 0; i-- {
		args = append(args, "--"+limitSetters[i].flag, limitValues[limitSetters[i].flag])
	}
	create, err := parseListen(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	update, err := parseLimit(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	assertProto(t, update.GetListener().GetSpec().GetLimits(), create.GetSpec().GetLimits())
	want := []string{
		"spec.limits.max_connections", "spec.limits.overflow", "spec.limits.queue_length", "spec.limits.queue_timeout",
		"spec.limits.idle_timeout", "spec.limits.max_lifetime",
		"spec.limits.accept_rate", "spec.limits.accept_burst", "spec.limits.max_connections_per_source",
	}
	if got := update.GetUpdateMask().GetPaths(); !slices.Equal(got, want) {
		t.Errorf("mask %v, want %v", got, want)
	}
	if l := create.GetSpec().GetLimits(); l.GetMaxConnections() != 7 || l.GetOverflow() != listenerdv1.OverflowPolicy_OVERFLOW_POLICY_QUEUE ||
		l.GetQueueLength() != 64 || l.GetQueueTimeout().AsDuration() != 2*time.Second ||
		l.GetAcceptBurst() != 4 || l.GetMaxConnectionsPerSource() != 3 || l.GetIdleTimeout().AsDuration().Seconds() != 30 {
		t.Errorf("limits %v", l)
	}

	// --unlimited names max_connections, first, with the field unset.
	update, err = parseLimit(t, "--max-lifetime", "0", "--unlimited")
	if err != nil {
		t.Fatal(err)
	}
	if got := update.GetUpdateMask().GetPaths(); !slices.Equal(got, []string{"spec.limits.max_connections", "spec.limits.max_lifetime"}) ||
		update.GetListener().GetSpec().GetLimits().MaxConnections != nil {
		t.Errorf("--unlimited: %v", update)
	}
}

func TestOrList(t *testing.T) {
	for want, words := range map[string][]string{
		"":             nil,
		"a":            {"a"},
		"a or b":       {"a", "b"},
		"a, b or c":    {"a", "b", "c"},
		"a, b, c or d": {"a", "b", "c", "d"},
	} {
		if got := orList(words); got != want {
			t.Errorf("orList(%q) = %q, want %q", words, got, want)
		}
	}
	if got := overflowWords(); got != "reject, backlog or queue" {
		t.Errorf("overflowWords() = %q", got)
	}
}

// ctl get, ctl limit and the limits_changed events show limits through
// one formatter: the same values, the line leaving out what is at its
// default.
func TestLimitsFormatterShared(t *testing.T) {
	lim := &listenerdv1.Limits{MaxConnections: u32(0), Overflow: listenerdv1.OverflowPolicy_OVERFLOW_POLICY_BACKLOG,
		IdleTimeout: durationpb.New(time.Minute), AcceptRate: 0.5, AcceptBurst: 3, MaxConnectionsPerSource: u32(2)}
	line := "max-connections=0 overflow=backlog idle-timeout=1m max-lifetime=none accept-rate=0.5/s accept-burst=3 max-per-source=2"
	if got := limitsLine(lim); got != line {
		t.Errorf("limitsLine:\n got %q\nwant %q", got, line)
	}
	ev := &listenerdv1.Event{Sequence: 3, ListenerId: "ln-1", Kind: &listenerdv1.Event_LimitsChanged{LimitsChanged: &listenerdv1.LimitsChanged{Limits: lim}}}
	if got := eventLine(ev, false); got != "seq=3 ln-1 limits_changed "+line {
		t.Errorf("eventLine: %q", got)
	}
	if got, _ := newFollowPrinter().line(ev); got != "LIMITS: "+line {
		t.Errorf("follow: %q", got)
	}

	get := func(lim *listenerdv1.Limits) string {
		t.Helper()
		var b bytes.Buffer
		if err := newApp(nil, nil).writeListener(&b, &listenerdv1.Listener{Id: "ln-1", Spec: &listenerdv1.ListenerSpec{Limits: lim}}); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	want := "max connections:  0\n" +
		"overflow:         backlog\n" +
		"idle timeout:     1m\n" +
		"max lifetime:     none\n" +
		"accept rate:      0.5/s\n" +
		"accept burst:     3\n" +
		"max per source:   2\n" +
		"backlog:"
	if got := get(lim); !strings.Contains(got, want) {
		t.Errorf("get:\n%s\nwant the rows\n%s", got, want)
	}
	// Unset, get still shows each limit; the line leaves the last three out.
	want = "accept rate:      unlimited\n" +
		"accept burst:     -\n" +
		"max per source:   unlimited\n"
	if got := get(nil); !strings.Contains(got, want) {
		t.Errorf("get of no limits:\n%s\nwant the rows\n%s", got, want)
	}
	if got := get(&listenerdv1.Limits{AcceptBurst: 5}); !strings.Contains(got, "accept burst:     5 (kept; no accept-rate to apply it to)\n") {
		t.Errorf("get of a burst with no rate:\n%s", got)
	}
}
