package ctl

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// queueEvents follow a connection through the queue (OVERFLOW_POLICY_QUEUE):
// queued, then served or rejected, with the lines ctl watch and
// ctl listen --follow print, and the JSON ctl watch -o json prints.
var queueEvents = []struct {
	ev     *listenerdv1.Event
	watch  string
	follow string
	json   string
}{
	{
		&listenerdv1.Event{Sequence: 20, ListenerId: "ln-1", Kind: &listenerdv1.Event_ConnectionQueued{ConnectionQueued: &listenerdv1.ConnectionQueued{
			ConnectionId: "ln-1.4", Tuple: tuple(54324), Position: 2,
		}}},
		"seq=20 ln-1 connection_queued c=ln-1.4 127.0.0.1:54324 -> 127.0.0.1:6969 position=2",
		"QUEUED: 127.0.0.1:54324 (2 connections ahead)",
		`{"sequence":"20","listenerId":"ln-1","connectionQueued":{"connectionId":"ln-1.4","tuple":{"remoteAddress":"127.0.0.1","remotePort":54324,"family":"FAMILY_IPV4","localAddress":"127.0.0.1","localPort":6969},"position":2}}`,
	},
	{
		// The first in line: position 0 is left out of the JSON, as protojson does.
		&listenerdv1.Event{Sequence: 21, ListenerId: "ln-1", Kind: &listenerdv1.Event_ConnectionQueued{ConnectionQueued: &listenerdv1.ConnectionQueued{
			ConnectionId: "ln-1.5", Tuple: tuple(54325),
		}}},
		"seq=21 ln-1 connection_queued c=ln-1.5 127.0.0.1:54325 -> 127.0.0.1:6969 position=0",
		"QUEUED: 127.0.0.1:54325 (0 connections ahead)",
		`{"sequence":"21","listenerId":"ln-1","connectionQueued":{"connectionId":"ln-1.5","tuple":{"remoteAddress":"127.0.0.1","remotePort":54325,"family":"FAMILY_IPV4","localAddress":"127.0.0.1","localPort":6969}}}`,
	},
	{
		// Served: the same id opens, and the follow line knows its address.
		&listenerdv1.Event{Sequence: 22, ListenerId: "ln-1", Kind: &listenerdv1.Event_ConnectionHalfClosed{ConnectionHalfClosed: &listenerdv1.ConnectionHalfClosed{ConnectionId: "ln-1.5"}}},
		"seq=22 ln-1 connection_half_closed c=ln-1.5",
		"END: 127.0.0.1:54325",
		`{"sequence":"22","listenerId":"ln-1","connectionHalfClosed":{"connectionId":"ln-1.5"}}`,
	},
	{
		&listenerdv1.Event{Sequence: 23, ListenerId: "ln-1", Kind: &listenerdv1.Event_ConnectionRejected{ConnectionRejected: &listenerdv1.ConnectionRejected{
			Tuple: tuple(54324), Reason: listenerdv1.RejectReason_REJECT_REASON_QUEUE_TIMEOUT,
			ConnectionId: "ln-1.4", QueueWait: durationpb.New(5 * time.Second),
		}}},
		"seq=23 ln-1 connection_rejected c=ln-1.4 127.0.0.1:54324 -> 127.0.0.1:6969 reason=queue_timeout waited=5s",
		"REJECTED: 127.0.0.1:54324 (queue timeout, waited 5s)",
		`{"sequence":"23","listenerId":"ln-1","connectionRejected":{"tuple":{"remoteAddress":"127.0.0.1","remotePort":54324,"family":"FAMILY_IPV4","localAddress":"127.0.0.1","localPort":6969},"reason":"REJECT_REASON_QUEUE_TIMEOUT","connectionId":"ln-1.4","queueWait":"5s"}}`,
	},
	{
		// Past the queue: rejected at once, with no id and no wait.
		&listenerdv1.Event{Sequence: 24, ListenerId: "ln-1", Kind: &listenerdv1.Event_ConnectionRejected{ConnectionRejected: &listenerdv1.ConnectionRejected{
			Tuple: tuple(54326), Reason: listenerdv1.RejectReason_REJECT_REASON_QUEUE_FULL,
		}}},
		"seq=24 ln-1 connection_rejected 127.0.0.1:54326 -> 127.0.0.1:6969 reason=queue_full",
		"REJECTED: 127.0.0.1:54326 (queue full)",
		`{"sequence":"24","listenerId":"ln-1","connectionRejected":{"tuple":{"remoteAddress":"127.0.0.1","remotePort":54326,"family":"FAMILY_IPV4","localAddress":"127.0.0.1","localPort":6969},"reason":"REJECT_REASON_QUEUE_FULL"}}`,
	},
	{
		&listenerdv1.Event{Sequence: 25, ListenerId: "ln-1", Kind: &listenerdv1.Event_ConnectionRejected{ConnectionRejected: &listenerdv1.ConnectionRejected{
			Tuple: tuple(54327), Reason: listenerdv1.RejectReason_REJECT_REASON_LISTENER_CLOSED,
			ConnectionId: "ln-1.6", QueueWait: durationpb.New(1500 * time.Millisecond),
		}}},
		"seq=25 ln-1 connection_rejected c=ln-1.6 127.0.0.1:54327 -> 127.0.0.1:6969 reason=listener_closed waited=1.5s",
		"REJECTED: 127.0.0.1:54327 (listener closed, waited 1.5s)",
		`{"sequence":"25","listenerId":"ln-1","connectionRejected":{"tuple":{"remoteAddress":"127.0.0.1","remotePort":54327,"family":"FAMILY_IPV4","localAddress":"127.0.0.1","localPort":6969},"reason":"REJECT_REASON_LISTENER_CLOSED","connectionId":"ln-1.6","queueWait":"1.500s"}}`,
	},
	{
		// Kicked while it waited; a wait of zero is still a wait.
		&listenerdv1.Event{Sequence: 26, ListenerId: "ln-1", Kind: &listenerdv1.Event_ConnectionRejected{ConnectionRejected: &listenerdv1.ConnectionRejected{
			Tuple: tuple(54328), Reason: listenerdv1.RejectReason_REJECT_REASON_KICKED,
			ConnectionId: "ln-1.7", QueueWait: durationpb.New(0),
		}}},
		"seq=26 ln-1 connection_rejected c=ln-1.7 127.0.0.1:54328 -> 127.0.0.1:6969 reason=kicked waited=0s",
		"REJECTED: 127.0.0.1:54328 (kicked, waited 0s)",
		`{"sequence":"26","listenerId":"ln-1","connectionRejected":{"tuple":{"remoteAddress":"127.0.0.1","remotePort":54328,"family":"FAMILY_IPV4","localAddress":"127.0.0.1","localPort":6969},"reason":"REJECT_REASON_KICKED","connectionId":"ln-1.7","queueWait":"0s"}}`,
	},
}

func TestQueueEventLines(t *testing.T) {
	p := newFollowPrinter()
	for _, s := range queueEvents {
		if got := eventLine(s.ev, false); got != s.watch {
			t.Errorf("eventLine:\n got %q\nwant %q", got, s.watch)
		}
		got, last := p.line(s.ev)
		if got != s.follow || last {
			t.Errorf("follow line:\n got %q (last %v)\nwant %q", got, last, s.follow)
		}
	}
	// A rejected connection that had queued is forgotten, as a closed one is.
	if _, ok := p.remotes["ln-1.4"]; ok {
		t.Error("follow printer still holds the address of a rejected queued connection")
	}
}

// ctl watch -o json prints the queue's events on the fast path, byte for
// byte as protojson does, with the reasons by their enum names.
func TestQueueEventJSON(t *testing.T) {
	for _, s := range queueEvents {
		checkSameJSON(t, s.ev)
		var b bytes.Buffer
		w := bufio.NewWriter(&b)
		if err := writeEventJSON(w, s.ev); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if got := b.String(); got != s.json+"\n" {
			t.Errorf("json:\n got %s\nwant %s", got, s.json)
		}
		if _, ok := appendEventJSON(nil, s.ev); !ok {
			t.Errorf("seq %d (%T) went through protojson", s.ev.GetSequence(), s.ev.GetKind())
		}
	}
	// A oneof case holding no message is left to protojson.
	for _, k := range []any{&listenerdv1.Event_ConnectionQueued{}, (*listenerdv1.Event_ConnectionQueued)(nil)} {
		ev := &listenerdv1.Event{Sequence: 1}
		reflectSetKind(ev, k)
		checkSameJSON(t, ev)
		if _, ok := appendEventJSON(nil, ev); ok {
			t.Errorf("%#v took the fast path", k)
		}
	}
}

// The queue's new words come from the enums: --kind takes connection_queued,
// and every reject reason has a word of its own.
func TestQueueWords(t *testing.T) {
	req, err := watchRequest(nil, []string{"connection_queued"})
	if err != nil {
		t.Fatal(err)
	}
	if k := req.GetKinds(); len(k) != 1 || k[0] != listenerdv1.EventKind_EVENT_KIND_CONNECTION_QUEUED {
		t.Errorf("kinds %v", k)
	}
	for r, want := range map[listenerdv1.RejectReason]string{
		listenerdv1.RejectReason_REJECT_REASON_QUEUE_FULL:      "queue_full",
		listenerdv1.RejectReason_REJECT_REASON_QUEUE_TIMEOUT:   "queue_timeout",
		listenerdv1.RejectReason_REJECT_REASON_LISTENER_CLOSED: "listener_closed",
		listenerdv1.RejectReason_REJECT_REASON_KICKED:          "kicked",
	} {
		if got := rejectReasonWord(r); got != want {
			t.Errorf("rejectReasonWord(%v) = %q, want %q", r, got, want)
		}
	}
}

// ctl watch, text and JSON, prints the queue's events as they come.
func TestWatchQueueEvents(t *testing.T) {
	var evs []*listenerdv1.Event
	for _, s := range queueEvents {
		evs = append(evs, s.ev)
	}
	svc := &fakeService{watch: func(_ *listenerdv1.WatchEventsRequest, s grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
		if err := send(s, 19, "b1", evs...); err != nil {
			return err
		}
		<-s.Context().Done()
		return nil
	}}
	sock := startFake(t, svc)
	last := queueEvents[len(queueEvents)-1]

	stdout, stderr, code := runCtlUntil(sock, last.watch, "watch", "--kind", "connection_queued", "--kind", "connection_rejected")
	var want strings.Builder
	for _, s := range queueEvents {
		want.WriteString(s.watch + "\n")
	}
	if code != ExitOK || stdout.String() != want.String() {
		t.Errorf("watch: exit %d, stderr %q, stdout\n%s\nwant\n%s", code, stderr.String(), stdout.String(), want.String())
	}
	if k := svc.watchRequests()[0].GetKinds(); len(k) != 2 || k[0] != listenerdv1.EventKind_EVENT_KIND_CONNECTION_QUEUED {
		t.Errorf("kinds %v", k)
	}

	stdout, stderr, code = runCtlUntil(sock, `"queueWait":"0s"`, "watch", "-o", "json")
	want.Reset()
	for _, s := range queueEvents {
		want.WriteString(s.json + "\n")
	}
	if code != ExitOK || stdout.String() != want.String() {
		t.Errorf("watch -o json: exit %d, stderr %q, stdout\n%s\nwant\n%s", code, stderr.String(), stdout.String(), want.String())
	}
}
