package declare

import (
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// mustParse reads a listeners file given as text.
func mustParse(t *testing.T, text string) *Set {
	t.Helper()
	set, err := Parse("l.yaml", []byte(text))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return set
}

// running is a listener as ListListeners returns it, its spec that of
// the file's entry name in text.
func running(t *testing.T, id, text, name string, state listenerdv1.State, declared bool) *listenerdv1.Listener {
	t.Helper()
	for _, e := range mustParse(t, text).Entries {
		if e.Name == name {
			return &listenerdv1.Listener{Id: id, Name: name, Spec: proto.Clone(e.Spec).(*listenerdv1.ListenerSpec),
				Status: &listenerdv1.ListenerStatus{State: state, Declared: declared, LastError: "address in use"}}
		}
	}
	t.Fatalf("no %s in %s", name, text)
	return nil
}

func lines(plan []Change) []string {
	out := make([]string, len(plan))
	for i, c := range plan {
		out[i] = c.String()
	}
	return out
}

func TestPlan(t *testing.T) {
	const base = `
listeners:
  web: {spec: {port: 8080, handler: {echo: {}}, limits: {maxConnections: 10}}}
  chat: {spec: {port: 7000, handler: {stream: {}}}}
`
	L, F, D := listenerdv1.State_STATE_LISTENING, listenerdv1.State_STATE_FAILED, listenerdv1.State_STATE_DRAINING
	web := func(st listenerdv1.State, declared bool) *listenerdv1.Listener {
		return running(t, "ln-00000001", base, "web", st, declared)
	}
	chat := running(t, "ln-00000002", base, "chat", L, true)
	other := &listenerdv1.Listener{Id: "ln-00000003", Name: "other", Spec: chat.Spec,
		Status: &listenerdv1.ListenerStatus{State: L}}
	unnamed := &listenerdv1.Listener{Id: "ln-00000004", Spec: chat.Spec, Status: &listenerdv1.ListenerStatus{State: L}}
	daemon := Options{Prune: true, Owned: declared, Adopt: true}
	for _, tc := range []struct {
		name    string
		current []*listenerdv1.Listener
		file    string
		opts    Options
		want    []string
	}{
		{"all missing", nil, base, daemon, []string{"create chat", "create web"}},
		{"unchanged", []*listenerdv1.Listener{web(L, true), chat}, base, daemon, []string{"unchanged chat", "unchanged web"}},
		{"limit raised", []*listenerdv1.Listener{web(L, true), chat}, strings.Replace(base, "maxConnections: 10", "maxConnections: 100", 1), daemon,
			[]string{"update web: max_connections 10 -> 100", "unchanged chat"}},
		{"limit removed", []*listenerdv1.Listener{web(L, true), chat}, strings.Replace(base, ", limits: {maxConnections: 10}", "", 1), daemon,
			[]string{"update web: max_connections 10 -> unset", "unchanged chat"}},
		{"durations and policy", []*listenerdv1.Listener{web(L, true)}, strings.Replace(base, "maxConnections: 10}", "maxConnections: 10, overflow: OVERFLOW_POLICY_QUEUE, idleTimeout: 1m30s}", 1), daemon,
			[]string{"update web: overflow reject -> queue, idle_timeout unset -> 1m30s, queue_length 0 -> 128", "create chat"}},
		{"port moved", []*listenerdv1.Listener{web(L, true), chat}, strings.Replace(base, "port: 8080", "port: 8081", 1), daemon,
			[]string{"rebind web: port 8080 -> 8081 (a new socket: closed and created again, with a new id)", "unchanged chat"}},
		{"host and limit", []*listenerdv1.Listener{web(L, true), chat}, strings.Replace(strings.Replace(base, "port: 8080", "host: 0.0.0.0, port: 8080", 1), "maxConnections: 10", "maxConnections: 5", 1), daemon,
			[]string{"rebind web: host 127.0.0.1 -> 0.0.0.0, max_connections 10 -> 5 (a new socket: closed and created again, with a new id)", "unchanged chat"}},
		{"handler changed", []*listenerdv1.Listener{web(L, true), chat}, strings.Replace(base, "{echo: {}}, limits", "{forward: {upstream: '127.0.0.1:9'}}, limits", 1), daemon,
			[]string{`rebind web: handler echo -> forward (handler cannot change in place: closed and created again, with a new id)`, "unchanged chat"}},
		{"forward upstream changed", []*listenerdv1.Listener{running(t, "ln-00000009", "listeners: {f: {spec: {handler: {forward: {upstream: 'a:1'}}}}}", "f", L, true)},
			"listeners: {f: {spec: {handler: {forward: {upstream: 'b:1'}}}}}", daemon,
			[]string{"rebind f: handler.forward.upstream a:1 -> b:1 (handler.forward.upstream cannot change in place: closed and created again, with a new id)"}},
		{"acl changed", []*listenerdv1.Listener{chat}, strings.Replace(base, "port: 7000", "port: 7000, denyCidrs: [10.0.0.0/8]", 1), daemon,
			[]string{"rebind chat: deny_cidrs [] -> [10.0.0.0/8] (deny_cidrs cannot change in place: closed and created again, with a new id)", "create web"}},
		{"failed comes back", []*listenerdv1.Listener{web(F, true), chat}, base, daemon,
			[]string{"rebind web (failed: address in use)", "unchanged chat"}},
		{"draining gave its name up", []*listenerdv1.Listener{web(D, true), chat}, base, daemon,
			[]string{"create web", "unchanged chat"}},
		{"removed from the file", []*listenerdv1.Listener{web(L, true), chat}, "listeners: {web: {spec: {port: 8080, handler: {echo: {}}, limits: {maxConnections: 10}}}}", daemon,
			[]string{"close chat (not in file l.yaml)", "unchanged web"}},
		{"the daemon closes only its own", []*listenerdv1.Listener{web(L, true), chat, other, unnamed}, "", daemon,
			[]string{"close web (not in file l.yaml)", "close chat (not in file l.yaml)"}},
		{"the daemon adopts by name", []*listenerdv1.Listener{web(L, false), chat}, base, daemon,
			[]string{"update web (declared from now on)", "unchanged chat"}},
		{"apply without prune keeps", []*listenerdv1.Listener{web(L, false), other, unnamed}, base, Options{Others: true},
			[]string{"create chat", "unchanged web", "keep other (not in file l.yaml; left alone without --prune)", "keep ln-00000004 (not in file l.yaml; left alone without --prune)"}},
		{"apply with prune closes any", []*listenerdv1.Listener{web(L, false), other, unnamed}, base, Options{Prune: true, Others: true},
			[]string{"close other (not in file l.yaml)", "close ln-00000004 (not in file l.yaml)", "create chat", "unchanged web"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := lines(Plan(tc.current, mustParse(t, tc.file), tc.opts))
			if !slices.Equal(got, tc.want) {
				t.Errorf("plan:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
		})
	}
}

func TestPlanCarriesSpecAndDrain(t *testing.T) {
	set := mustParse(t, "listeners: {a: {spec: {port: 1}, drainTimeout: 2s}, b: {spec: {port: 2}}}\ndrainTimeout: 7s\n")
	old := &listenerdv1.Listener{Id: "ln-0000000c", Name: "c", Spec: set.Entries[0].Spec,
		Status: &listenerdv1.ListenerStatus{State: listenerdv1.State_STATE_LISTENING, Declared: true}}
	plan := Plan([]*listenerdv1.Listener{old}, set, Options{Prune: true, Owned: declared})
	got := map[string]Change{}
	for _, c := range plan {
		got[c.Name] = c
	}
	if c := got["a"]; c.Drain.String() != "2s" || c.Spec.GetPort() != 1 || c.Spec.GetHost() != "127.0.0.1" {
		t.Errorf("a: drain %v, spec %v", c.Drain, c.Spec)
	}
	if c := got["b"]; c.Drain.String() != "7s" {
		t.Errorf("b: drain %v, want the file's 7s", c.Drain)
	}
	if c := got["c"]; c.Action != Close || c.Drain.String() != "7s" || c.ID != "ln-0000000c" {
		t.Errorf("c: %+v, want a close of its id draining 7s", c)
	}
}

// A listener closed because the set no longer names it drains for its own
// timeout when the set has one for it (a bucket's deleted key's), else
// for the set's.
func TestPlanCloseDrainByName(t *testing.T) {
	L := listenerdv1.State_STATE_LISTENING
	cur := []*listenerdv1.Listener{
		{Id: "ln-00000001", Name: "a", Status: &listenerdv1.ListenerStatus{State: L, Declared: true}},
		{Id: "ln-00000002", Name: "b", Status: &listenerdv1.ListenerStatus{State: L, Declared: true}},
	}
	set := &Set{Source: "nats bucket B", Drain: 30 * time.Second, Drains: map[string]time.Duration{"a": 5 * time.Second}}
	got := map[string]time.Duration{}
	for _, c := range Plan(cur, set, Options{Prune: true, Owned: declared}) {
		if c.Action != Close {
			t.Fatalf("plan: %v, want closes only", c)
		}
		got[c.Name] = c.Drain
	}
	if got["a"] != 5*time.Second || got["b"] != 30*time.Second {
		t.Fatalf("drains %v, want a 5s (its own) and b 30s (the set's)", got)
	}
}

// A name the set keeps is not closed though the set does not name it.
func TestPlanKeep(t *testing.T) {
	const text = "listeners:\n  web: {spec: {port: 8080, handler: {echo: {}}}}\n  chat: {spec: {port: 7000, handler: {echo: {}}}}\n"
	L := listenerdv1.State_STATE_LISTENING
	cur := []*listenerdv1.Listener{running(t, "ln-00000001", text, "web", L, true), running(t, "ln-00000002", text, "chat", L, true)}
	set := &Set{Source: "nats bucket B", Keep: map[string]bool{"chat": true}}
	got := lines(Plan(cur, set, Options{Prune: true, Owned: declared, Adopt: true}))
	if want := []string{"close web (not in nats bucket B)"}; !slices.Equal(got, want) {
		t.Fatalf("plan %q, want %q", got, want)
	}
}
