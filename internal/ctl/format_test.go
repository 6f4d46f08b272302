package ctl

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

func TestHumanBytes(t *testing.T) {
	for n, want := range map[uint64]string{
		0:              "0 B",
		18:             "18 B",
		1023:           "1023 B",
		1024:           "1.0 KiB",
		1229:           "1.2 KiB",
		3 << 20:        "3.0 MiB",
		5 << 30:        "5.0 GiB",
		1<<40 + 1<<39:  "1.5 TiB",
		^uint64(0) / 2: "8.0 EiB",
	} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                                 "0s",
		1500 * time.Microsecond:           "2ms",
		850 * time.Millisecond:            "850ms",
		1200 * time.Millisecond:           "1.2s",
		30 * time.Second:                  "30s",
		3*time.Minute + 12*time.Second:    "3m12s",
		2*time.Hour + 5*time.Minute:       "2h5m",
		76 * time.Hour:                    "3d4h",
		48 * time.Hour:                    "2d",
		time.Minute:                       "1m",
		-2 * time.Second:                  "-2s",
		250 * time.Microsecond:            "250µs",
		59*time.Minute + 59*time.Second:   "59m59s",
		23*time.Hour + 59*time.Minute + 1: "23h59m",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func tuple(rport uint32) *listenerdv1.FiveTuple {
	return &listenerdv1.FiveTuple{RemoteAddress: "127.0.0.1", RemotePort: rport, Family: listenerdv1.Family_FAMILY_IPV4, LocalAddress: "127.0.0.1", LocalPort: 6969}
}

// sampleEvents has one event of every kind, with their watch and follow lines.
var sampleEvents = []struct {
	ev     *listenerdv1.Event
	watch  string
	follow string
}{
	{
		&listenerdv1.Event{Sequence: 1, ListenerId: "ln-1", Kind: &listenerdv1.Event_ListenerStarted{ListenerStarted: &listenerdv1.ListenerStarted{BoundAddress: "127.0.0.1:6969", Name: "web"}}},
		"seq=1 ln-1 listener_started 127.0.0.1:6969 name=web", "",
	},
	{
		&listenerdv1.Event{Sequence: 2, ListenerId: "ln-1", Kind: &listenerdv1.Event_ConnectionOpened{ConnectionOpened: &listenerdv1.ConnectionOpened{ConnectionId: "ln-1.1", Tuple: tuple(54321)}}},
		"seq=2 ln-1 connection_opened c=ln-1.1 127.0.0.1:54321 -> 127.0.0.1:6969", "CONNECTED: 127.0.0.1:54321",
	},
	{
		&listenerdv1.Event{Sequence: 3, ListenerId: "ln-1", Kind: &listenerdv1.Event_ConnectionHalfClosed{ConnectionHalfClosed: &listenerdv1.ConnectionHalfClosed{ConnectionId: "ln-1.1"}}},
		"seq=3 ln-1 connection_half_closed c=ln-1.1", "END: 127.0.0.1:54321",
	},
	{
		&listenerdv1.Event{Sequence: 4, ListenerId: "ln-1", Kind: &listenerdv1.Event_ConnectionClosed{ConnectionClosed: &listenerdv1.ConnectionClosed{
			ConnectionId: "ln-1.1", Tuple: tuple(54321), BytesIn: 18, BytesOut: 18,
			Duration: durationpb.New(1200 * time.Millisecond), Reason: listenerdv1.CloseReason_CLOSE_REASON_PEER_CLOSED,
		}}},
		"seq=4 ln-1 connection_closed c=ln-1.1 127.0.0.1:54321 reason=peer_closed in=18 out=18 duration=1.2s",
		"CLOSED: 127.0.0.1:54321 (peer closed, in 18 B, out 18 B, 1.2s)",
	},
	{
		&listenerdv1.Event{Sequence: 5, ListenerId: "ln-1", Kind: &listenerdv1.Event_ConnectionClosed{ConnectionClosed: &listenerdv1.ConnectionClosed{
			ConnectionId: "ln-1.2", Tuple: tuple(54322), BytesIn: 2048, Duration: durationpb.New(5 * time.Millisecond),
			Reason: listenerdv1.CloseReason_CLOSE_REASON_RESET, Error: "connection reset by peer",
		}}},
		`seq=5 ln-1 connection_closed c=ln-1.2 127.0.0.1:54322 reason=reset in=2048 out=0 duration=5ms error="connection reset by peer"`,
		"CLOSED: 127.0.0.1:54322 (reset: connection reset by peer, in 2.0 KiB, out 0 B, 5ms)",
	},
	{
		&listenerdv1.Event{Sequence: 6, ListenerId: "ln-1", Kind: &listenerdv1.Event_ConnectionRejected{ConnectionRejected: &listenerdv1.ConnectionRejected{
			Tuple: tuple(54323), Reason: listenerdv1.RejectReason_REJECT_REASON_MAX_CONNECTIONS,
		}}},
		"seq=6 ln-1 connection_rejected 127.0.0.1:54323 -> 127.0.0.1:6969 reason=max_connections",
		"REJECTED: 127.0.0.1:54323 (max connections)",
	},
	{
		&listenerdv1.Event{Sequence: 7, ListenerId: "ln-1", Kind: &listenerdv1.Event_AcceptError{AcceptError: &listenerdv1.AcceptError{
			Error: "accept4: too many open files", Backoff: durationpb.New(5 * time.Millisecond), Count: 3,
		}}},
		`seq=7 ln-1 accept_error error="accept4: too many open files" backoff=5ms count=3`,
		"ERROR: accept: accept4: too many open files (retrying in 5ms, 3 times)",
	},
	{
		&listenerdv1.Event{Sequence: 8, ListenerId: "ln-1", Kind: &listenerdv1.Event_LimitsChanged{LimitsChanged: &listenerdv1.LimitsChanged{
			Limits: &listenerdv1.Limits{MaxConnections: u32(2), IdleTimeout: durationpb.New(time.Minute)},
		}}},
		"seq=8 ln-1 limits_changed max-connections=2 overflow=reject idle-timeout=1m max-lifetime=none",
		"LIMITS: max-connections=2 overflow=reject idle-timeout=1m max-lifetime=none",
	},
	{
		&listenerdv1.Event{Sequence: 9, ListenerId: "ln-1", Kind: &listenerdv1.Event_ListenerClosed{ListenerClosed: &listenerdv1.ListenerClosed{Drained: 2, Destroyed: 1}}},
		"seq=9 ln-1 listener_closed drained=2 destroyed=1",
		"SERVER CLOSED (2 drained, 1 destroyed)",
	},
	{
		&listenerdv1.Event{Sequence: 10, ListenerId: "ln-1", Kind: &listenerdv1.Event_ConnectionOpened{ConnectionOpened: &listenerdv1.ConnectionOpened{ConnectionId: "ln-1.3", Tuple: &listenerdv1.FiveTuple{
			RemoteAddress: "::1", RemotePort: 40000, Family: listenerdv1.Family_FAMILY_IPV6, LocalAddress: "::1", LocalPort: 6969,
		}}}},
		"seq=10 ln-1 connection_opened c=ln-1.3 [::1]:40000 -> [::1]:6969", "CONNECTED: [::1]:40000",
	},
	{
		&listenerdv1.Event{Sequence: 11, ListenerId: "ln-1", Kind: &listenerdv1.Event_ConnectionData{ConnectionData: &listenerdv1.ConnectionData{
			ConnectionId: "ln-1.3", Direction: listenerdv1.Direction_DIRECTION_IN, Data: []byte("hi\n"), Length: 300,
		}}},
		`seq=11 ln-1 connection_data c=ln-1.3 in len=300 data="hi\n"`, `DATA: [::1]:40000: "hi\n" (300 B in all)`,
	},
	{
		&listenerdv1.Event{Sequence: 12, ListenerId: "ln-1", Kind: &listenerdv1.Event_HandlerAttached{HandlerAttached: &listenerdv1.HandlerAttached{
			HandlerId: "h-0a0b0c0d", Label: "ctl serve (pid 42)", MaxConnections: 16,
		}}},
		`seq=12 ln-1 handler_attached h=h-0a0b0c0d max=16 label="ctl serve (pid 42)"`, "",
	},
	{
		&listenerdv1.Event{Sequence: 13, ListenerId: "ln-1", Kind: &listenerdv1.Event_ConnectionTaken{ConnectionTaken: &listenerdv1.ConnectionTaken{
			ConnectionId: "ln-1.4", HandlerId: "h-0a0b0c0d",
		}}},
		"seq=13 ln-1 connection_taken c=ln-1.4 h=h-0a0b0c0d", "",
	},
	{
		&listenerdv1.Event{Sequence: 14, ListenerId: "ln-1", Kind: &listenerdv1.Event_HandlerDetached{HandlerDetached: &listenerdv1.HandlerDetached{
			HandlerId: "h-0a0b0c0d", Reason: "detached",
		}}},
		`seq=14 ln-1 handler_detached h=h-0a0b0c0d reason="detached"`, "",
	},
}

func TestEventLines(t *testing.T) {
	p := newFollowPrinter()
	for _, s := range sampleEvents {
		if got := eventLine(s.ev, false); got != s.watch {
			t.Errorf("eventLine:\n got %q\nwant %q", got, s.watch)
		}
		got, last := p.line(s.ev)
		if got != s.follow {
			t.Errorf("follow line:\n got %q\nwant %q", got, s.follow)
		}
		if _, closed := s.ev.GetKind().(*listenerdv1.Event_ListenerClosed); last != closed {
			t.Errorf("seq %d: last = %v", s.ev.GetSequence(), last)
		}
	}
	ev := &listenerdv1.Event{Sequence: 1, ListenerId: "ln-1", Time: timestamppb.New(time.Date(2025, 1, 2, 3, 4, 5, 6e6, time.Local)),
		Kind: &listenerdv1.Event_ListenerClosed{ListenerClosed: &listenerdv1.ListenerClosed{}}}
	if got, want := eventLine(ev, true), "03:04:05.006 seq=1 ln-1 listener_closed drained=0 destroyed=0"; got != want {
		t.Errorf("wide: got %q, want %q", got, want)
	}
}

func sampleListeners() []*listenerdv1.Listener {
	created := timestamppb.New(time.Date(2025, 6, 1, 12, 0, 0, 0, time.Local))
	return []*listenerdv1.Listener{
		{
			Id: "ln-1a2b3c4d", Name: "web",
			Spec: &listenerdv1.ListenerSpec{Port: 6969, Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Echo{Echo: &listenerdv1.EchoHandler{}}},
				Limits: &listenerdv1.Limits{MaxConnections: u32(5)}},
			Status: &listenerdv1.ListenerStatus{State: listenerdv1.State_STATE_LISTENING, BoundAddress: "127.0.0.1:6969",
				ActiveConnections: 2, AcceptedConnections: 10, RejectedConnections: 1, BytesIn: 2048, BytesOut: 18, CreateTime: created},
		},
		{
			Id:     "ln-5e6f7a8b",
			Spec:   &listenerdv1.ListenerSpec{Host: "::1", Port: 80},
			Status: &listenerdv1.ListenerStatus{State: listenerdv1.State_STATE_FAILED, LastError: "permission denied", CreateTime: created},
		},
	}
}

func TestWriteListeners(t *testing.T) {
	a := newApp(nil, nil)
	var b bytes.Buffer

	a.output = outputText
	if err := a.writeListeners(&b, sampleListeners()); err != nil {
		t.Fatal(err)
	}
	want := `ID           NAME  ADDRESS         STATE      ACTIVE  ACCEPTED  REJECTED  MAX  MODE
ln-1a2b3c4d  web   127.0.0.1:6969  listening  2       10        1         5    echo
ln-5e6f7a8b  -     [::1]:80        failed     0       0         0         -    discard
`
	if b.String() != want {
		t.Errorf("text:\n%s\nwant\n%s", b.String(), want)
	}

	b.Reset()
	a.output, a.noHeaders = outputWide, true
	if err := a.writeListeners(&b, sampleListeners()); err != nil {
		t.Fatal(err)
	}
	want = `ln-1a2b3c4d  web  127.0.0.1:6969  listening  2  10  1  5  echo     2.0 KiB  18 B  2025-06-01 12:00:00
ln-5e6f7a8b  -    [::1]:80        failed     0  0   0  -  discard  0 B      0 B   2025-06-01 12:00:00
`
	if b.String() != want {
		t.Errorf("wide, no headers:\n%s\nwant\n%s", b.String(), want)
	}
}

func TestWriteListener(t *testing.T) {
	a := newApp(nil, nil)
	a.now = func() time.Time { return time.Date(2025, 6, 1, 12, 3, 0, 0, time.Local) }
	var b bytes.Buffer
	if err := a.writeListener(&b, sampleListeners()[0]); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"id:               ln-1a2b3c4d\n",
		"name:             web\n",
		"state:            listening\n",
		"address:          127.0.0.1:6969\n",
		"mode:             echo\n",
		"max connections:  5\n",
		"idle timeout:     none\n",
		"backlog:          system default\n",
		"bytes in:         2.0 KiB\n",
		"created:          2025-06-01 12:00:00 (3m ago)\n",
		"last error:       -\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("missing %q in\n%s", want, b.String())
		}
	}
	b.Reset()
	if err := a.writeListener(&b, &listenerdv1.Listener{Id: "x", Spec: &listenerdv1.ListenerSpec{Limits: &listenerdv1.Limits{MaxConnections: u32(0)}}}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "max connections:  0\n") {
		t.Errorf("max 0 shown as:\n%s", b.String())
	}
}

func TestWriteConnections(t *testing.T) {
	a := newApp(nil, nil)
	opened := time.Date(2025, 6, 1, 12, 0, 0, 0, time.Local)
	a.now = func() time.Time { return opened.Add(90 * time.Second) }
	cs := []*listenerdv1.Connection{{Id: "ln-1.3", ListenerId: "ln-1", Tuple: tuple(54321), OpenTime: timestamppb.New(opened), BytesIn: 5000, BytesOut: 7}}
	var b bytes.Buffer
	if err := a.writeConnections(&b, cs); err != nil {
		t.Fatal(err)
	}
	want := `ID      REMOTE           LOCAL           AGE    IN       OUT
ln-1.3  127.0.0.1:54321  127.0.0.1:6969  1m30s  4.9 KiB  7 B
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

func TestLineHelpers(t *testing.T) {
	if got := limitsLine(nil); got != "max-connections=unlimited overflow=reject idle-timeout=none max-lifetime=none" {
		t.Errorf("limitsLine(nil) = %q", got)
	}
	draining := &listenerdv1.Listener{Id: "ln-1", Status: &listenerdv1.ListenerStatus{State: listenerdv1.State_STATE_DRAINING, ActiveConnections: 3}}
	plain := &listenerdv1.CloseListenerRequest{Id: "ln-1"}
	if got := closedLine(draining, plain); got != "closed ln-1 (draining 3 connections)" {
		t.Errorf("closedLine = %q", got)
	}
	draining.Status.ActiveConnections = 1
	if got := closedLine(draining, plain); got != "closed ln-1 (draining 1 connection)" {
		t.Errorf("closedLine = %q", got)
	}
	for _, req := range []*listenerdv1.CloseListenerRequest{{Id: "ln-1", Force: true}, {Id: "ln-1", DrainTimeout: durationpb.New(0)}} {
		if got := closedLine(draining, req); got != "closed ln-1 (destroying 1 connection)" {
			t.Errorf("closedLine for %v = %q", req, got)
		}
	}
	if got := closedLine(&listenerdv1.Listener{Id: "ln-2", Status: &listenerdv1.ListenerStatus{State: listenerdv1.State_STATE_CLOSED}}, plain); got != "closed ln-2" {
		t.Errorf("closedLine = %q", got)
	}
}
