package ctl

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

const queuePolicy = listenerdv1.OverflowPolicy_OVERFLOW_POLICY_QUEUE

func TestListenQueueFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want *listenerdv1.Limits
	}{
		{
			[]string{"--max-connections", "10", "--overflow", "queue", "--queue-length", "64", "--queue-timeout", "5s"},
			&listenerdv1.Limits{MaxConnections: u32(10), Overflow: queuePolicy, QueueLength: 64, QueueTimeout: durationpb.New(5 * time.Second)},
		},
		{[]string{"--overflow", "QUEUE"}, &listenerdv1.Limits{Overflow: queuePolicy}},
		{[]string{"--overflow", "overflow_policy_queue", "--queue-length", "65535"}, &listenerdv1.Limits{Overflow: queuePolicy, QueueLength: 65535}},
		// 0 is each one's default: 128 waiting, for as long as it takes.
		{[]string{"--overflow", "queue", "--queue-length", "0", "--queue-timeout", "0"}, &listenerdv1.Limits{Overflow: queuePolicy, QueueTimeout: durationpb.New(0)}},
	} {
		got, err := parseListen(t, tt.args...)
		if err != nil {
			t.Fatalf("%v: %v", tt.args, err)
		}
		assertProto(t, got, &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{Limits: tt.want}})
	}
}

func TestLimitQueueFlags(t *testing.T) {
	for _, tt := range []struct {
		args  []string
		want  *listenerdv1.Limits
		paths []string
	}{
		{
			[]string{"--queue-timeout", "1m", "--overflow", "queue", "--queue-length", "32", "--max-connections", "4"},
			&listenerdv1.Limits{MaxConnections: u32(4), Overflow: queuePolicy, QueueLength: 32, QueueTimeout: durationpb.New(time.Minute)},
			[]string{"spec.limits.max_connections", "spec.limits.overflow", "spec.limits.queue_length", "spec.limits.queue_timeout"},
		},
		// Alone, for a listener that queues already.
		{[]string{"--queue-length", "32"}, &listenerdv1.Limits{QueueLength: 32}, []string{"spec.limits.queue_length"}},
		{[]string{"--queue-timeout", "0"}, &listenerdv1.Limits{QueueTimeout: durationpb.New(0)}, []string{"spec.limits.queue_timeout"}},
		{[]string{"--queue-length", "0"}, &listenerdv1.Limits{}, []string{"spec.limits.queue_length"}},
		{[]string{"--overflow", "queue"}, &listenerdv1.Limits{Overflow: queuePolicy}, []string{"spec.limits.overflow"}},
	} {
		got, err := parseLimit(t, tt.args...)
		if err != nil {
			t.Fatalf("%v: %v", tt.args, err)
		}
		assertProto(t, got, &listenerdv1.UpdateListenerRequest{
			Listener:   &listenerdv1.Listener{Id: "web", Spec: &listenerdv1.ListenerSpec{Limits: tt.want}},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: tt.paths},
		})
	}
}

// Bad queue values are usage errors that name the flag, before anything is
// sent.
func TestQueueFlagErrors(t *testing.T) {
	both := map[string]string{
		"--overflow queue --queue-length 65536":   "--queue-length must be 1-65535 (0 means the default, 128)",
		"--overflow queue --queue-timeout -1s":    "--queue-timeout must not be negative (0 means no limit)",
		"--overflow backlog --queue-length 5":     "--queue-length needs --overflow queue, not backlog",
		"--queue-timeout 5s --overflow reject":    "--queue-timeout needs --overflow queue, not reject",
		"--overflow queued":                       `unknown --overflow "queued" (want reject, backlog or queue)`,
		"--idle-timeout -1s":                      "--idle-timeout must not be negative (0 means never)",
		"--max-lifetime -2m":                      "--max-lifetime must not be negative (0 means never)",
		"--overflow queue --queue-length 4294967": "--queue-length must be 1-65535 (0 means the default, 128)",
	}
	for args, want := range both {
		_, err := parseListen(t, strings.Fields(args)...)
		assertUsage(t, err)
		if err.Error() != want {
			t.Errorf("listen %s: %q, want %q", args, err, want)
		}
		_, err = parseLimit(t, strings.Fields(args)...)
		assertUsage(t, err)
		if err.Error() != want {
			t.Errorf("limit %s: %q, want %q", args, err, want)
		}
	}
	// A new listener has no queue unless --overflow queue says so.
	for _, flag := range []string{"--queue-length 5", "--queue-timeout 5s"} {
		_, err := parseListen(t, strings.Fields(flag)...)
		assertUsage(t, err)
		if want := strings.Fields(flag)[0] + " needs --overflow queue"; err.Error() != want {
			t.Errorf("listen %s: %q, want %q", flag, err, want)
		}
	}

	// Through the command line: exit 2, one line naming the flag, nothing sent.
	sock := startFake(t, &fakeService{})
	for _, args := range [][]string{
		{"listen", "--overflow", "queue", "--queue-length", "70000"},
		{"listen", "--queue-length", "3"},
		{"listen", "--overflow", "queue", "--queue-length", "x"},
		{"listen", "--overflow", "queue", "--queue-timeout", "soon"},
		{"limit", "web", "--queue-length", "65536"},
		{"limit", "web", "--queue-timeout", "-5s"},
		{"limit", "web", "--queue-length", "-1"},
	} {
		r := runCtl(t, sock, args...)
		flag := args[len(args)-2]
		if r.code != ExitUsage || !strings.HasPrefix(r.stderr, "ctl: ") || !strings.Contains(r.stderr, flag) ||
			strings.Count(r.stderr, "\n") != 1 || r.stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 naming %s", args, r.code, r.stdout, r.stderr, flag)
		}
	}
}

func TestQueueLimitsShown(t *testing.T) {
	for _, tt := range []struct {
		limits *listenerdv1.Limits
		line   string
	}{
		{
			&listenerdv1.Limits{MaxConnections: u32(10), Overflow: queuePolicy},
			"max-connections=10 overflow=queue queue-length=128 queue-timeout=none idle-timeout=none max-lifetime=none",
		},
		{
			&listenerdv1.Limits{MaxConnections: u32(10), Overflow: queuePolicy, QueueLength: 64, QueueTimeout: durationpb.New(5 * time.Second), MaxConnectionsPerSource: u32(2)},
			"max-connections=10 overflow=queue queue-length=64 queue-timeout=5s idle-timeout=none max-lifetime=none max-per-source=2",
		},
		// Under another policy the daemon ignores the queue's limits, and so does the line.
		{
			&listenerdv1.Limits{Overflow: listenerdv1.OverflowPolicy_OVERFLOW_POLICY_BACKLOG, QueueLength: 64, QueueTimeout: durationpb.New(time.Second)},
			"max-connections=unlimited overflow=backlog idle-timeout=none max-lifetime=none",
		},
	} {
		if got := limitsLine(tt.limits); got != tt.line {
			t.Errorf("limitsLine:\n got %q\nwant %q", got, tt.line)
		}
	}

	// ctl limit prints the limits now in force.
	svc := &fakeService{update: func(_ context.Context, r *listenerdv1.UpdateListenerRequest) (*listenerdv1.UpdateListenerResponse, error) {
		return &listenerdv1.UpdateListenerResponse{Listener: &listenerdv1.Listener{Id: "ln-1", Spec: r.GetListener().GetSpec()}}, nil
	}}
	sock := startFake(t, svc)
	r := runCtl(t, sock, "limit", "web", "--overflow", "queue", "--queue-timeout", "2s")
	if want := "limits of ln-1: max-connections=unlimited overflow=queue queue-length=128 queue-timeout=2s idle-timeout=none max-lifetime=none\n"; r.code != ExitOK || r.stdout != want {
		t.Errorf("limit: exit %d, stdout %q, stderr %q, want %q", r.code, r.stdout, r.stderr, want)
	}
}

// queueListener queues: 3 served, 2 waiting in a queue of 64.
func queueListener() *listenerdv1.Listener {
	return &listenerdv1.Listener{
		Id: "ln-9a9a9a9a", Name: "q",
		Spec: &listenerdv1.ListenerSpec{Port: 7000, Limits: &listenerdv1.Limits{
			MaxConnections: u32(3), Overflow: queuePolicy, QueueLength: 64, QueueTimeout: durationpb.New(10 * time.Second)}},
		Status: &listenerdv1.ListenerStatus{State: listenerdv1.State_STATE_LISTENING, BoundAddress: "127.0.0.1:7000",
			ActiveConnections: 3, QueuedConnections: 2, AcceptedConnections: 5, RejectedConnections: 4},
	}
}

func TestQueueInGetAndLs(t *testing.T) {
	a := newApp(nil, nil)
	var b bytes.Buffer
	if err := a.writeListener(&b, queueListener()); err != nil {
		t.Fatal(err)
	}
	want := "overflow:         queue\n" +
		"queue length:     64\n" +
		"queue timeout:    10s\n" +
		"idle timeout:     none\n"
	if !strings.Contains(b.String(), want) || !strings.Contains(b.String(), "active:           3\nqueued:           2\naccepted:         5\n") {
		t.Errorf("get:\n%s\nwant the rows\n%s", b.String(), want)
	}
	// A listener that does not queue shows neither.
	b.Reset()
	if err := a.writeListener(&b, sampleListeners()[0]); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "queue") {
		t.Errorf("get of a listener that does not queue:\n%s", b.String())
	}

	// ls adds QUEUED after ACTIVE when a listener queues; "-o wide" too.
	b.Reset()
	a.output = outputText
	if err := a.writeListeners(&b, append(sampleListeners(), queueListener())); err != nil {
		t.Fatal(err)
	}
	want = `ID           NAME  ADDRESS         STATE      ACTIVE  QUEUED  ACCEPTED  REJECTED  MAX  MODE
ln-1a2b3c4d  web   127.0.0.1:6969  listening  2       0       10        1         5    echo
ln-5e6f7a8b  -     [::1]:80        failed     0       0       0         0         -    discard
ln-9a9a9a9a  q     127.0.0.1:7000  listening  3       2       5         4         3    discard
`
	if b.String() != want {
		t.Errorf("ls:\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	a.output, a.noHeaders = outputWide, true
	if err := a.writeListeners(&b, []*listenerdv1.Listener{queueListener()}); err != nil {
		t.Fatal(err)
	}
	if want := "ln-9a9a9a9a  q  127.0.0.1:7000  listening  3  2  5  4  3  discard  0 B  0 B  -\n"; b.String() != want {
		t.Errorf("ls -o wide:\n%q\nwant\n%q", b.String(), want)
	}
	// Connections still waiting after the policy changed count too.
	l := queueListener()
	l.Spec.Limits.Overflow = listenerdv1.OverflowPolicy_OVERFLOW_POLICY_REJECT
	if !queues(l) {
		t.Error("a listener with queued connections does not queue")
	}
	l.Status.QueuedConnections = 0
	if queues(l) || slices.ContainsFunc(sampleListeners(), queues) {
		t.Error("a listener that does not queue queues")
	}
}

func TestQueueInConns(t *testing.T) {
	a := newApp(nil, nil)
	opened := time.Date(2025, 6, 1, 12, 0, 0, 0, time.Local)
	a.now = func() time.Time { return opened.Add(90 * time.Second) }
	cs := []*listenerdv1.Connection{
		{Id: "ln-1.3", Tuple: tuple(54321), OpenTime: timestamppb.New(opened), BytesIn: 5000, BytesOut: 7,
			State: listenerdv1.ConnectionState_CONNECTION_STATE_OPEN},
		{Id: "ln-1.4", Tuple: tuple(54322), OpenTime: timestamppb.New(opened), BytesIn: 3,
			State: listenerdv1.ConnectionState_CONNECTION_STATE_OPEN, QueueWait: durationpb.New(12 * time.Second)},
		{Id: "ln-1.5", Tuple: tuple(54323), OpenTime: timestamppb.New(opened.Add(30 * time.Second)),
			State: listenerdv1.ConnectionState_CONNECTION_STATE_QUEUED, QueueWait: durationpb.New(time.Minute)},
	}
	var b bytes.Buffer
	if err := a.writeConnections(&b, cs); err != nil {
		t.Fatal(err)
	}
	want := `ID      REMOTE           LOCAL           AGE    STATE   WAIT  IN       OUT
ln-1.3  127.0.0.1:54321  127.0.0.1:6969  1m30s  open    -     4.9 KiB  7 B
ln-1.4  127.0.0.1:54322  127.0.0.1:6969  1m30s  open    12s   3 B      0 B
ln-1.5  127.0.0.1:54323  127.0.0.1:6969  1m     queued  1m    0 B      0 B
`
	if b.String() != want {
		t.Errorf("conns:\n%s\nwant\n%s", b.String(), want)
	}

	// Without a queue in play (a zero wait is no wait), no queue columns.
	b.Reset()
	if err := a.writeConnections(&b, []*listenerdv1.Connection{{Id: "ln-1.3", Tuple: tuple(54321), OpenTime: timestamppb.New(opened),
		State: listenerdv1.ConnectionState_CONNECTION_STATE_OPEN, QueueWait: durationpb.New(0)}}); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "STATE") || strings.Contains(b.String(), "open") {
		t.Errorf("conns without a queue:\n%s", b.String())
	}

	// -o wide keeps the queue columns before its own; -o json has the fields.
	b.Reset()
	a.output, a.noHeaders = outputWide, true
	if err := a.writeConnections(&b, cs[2:]); err != nil {
		t.Fatal(err)
	}
	if want := "ln-1.5  127.0.0.1:54323  127.0.0.1:6969  1m  queued  1m  0 B  0 B  IPv4  2025-06-01 12:00:30\n"; b.String() != want {
		t.Errorf("conns -o wide:\n%q\nwant\n%q", b.String(), want)
	}
	b.Reset()
	if err := writeDoc(&b, &listenerdv1.ListConnectionsResponse{Connections: cs[2:]}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `"state":"CONNECTION_STATE_QUEUED","queueWait":"60s"`) {
		t.Errorf("conns -o json: %s", b.String())
	}
}

func TestOverflowCompletion(t *testing.T) {
	sock := startFake(t, &fakeService{})
	for _, cmd := range [][]string{{"listen"}, {"limit", "web"}} {
		r := runCtl(t, sock, append(append([]string{"__complete"}, cmd...), "--overflow", "")...)
		var words []string
		for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			if !strings.HasPrefix(l, ":") {
				words = append(words, strings.SplitN(l, "\t", 2)[0])
				if !strings.Contains(l, "\t") {
					t.Errorf("%v: %q has no description", cmd, l)
				}
			}
		}
		if got := strings.Join(words, " "); r.code != ExitOK || got != "reject backlog queue" {
			t.Errorf("%v --overflow: exit %d, words %q", cmd, r.code, got)
		}
	}
}
