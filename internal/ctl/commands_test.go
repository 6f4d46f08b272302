package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// recorder keeps the last request an RPC of the fake received.
type recorder struct {
	mu   sync.Mutex
	last proto.Message
}

func (r *recorder) set(m proto.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last = proto.Clone(m)
}

func (r *recorder) get() proto.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil {
		return &emptypb.Empty{}
	}
	return r.last
}

func TestListenCommand(t *testing.T) {
	var rec recorder
	svc := &fakeService{create: func(_ context.Context, r *listenerdv1.CreateListenerRequest) (*listenerdv1.CreateListenerResponse, error) {
		rec.set(r)
		return &listenerdv1.CreateListenerResponse{Listener: &listenerdv1.Listener{
			Id: "ln-1a2b3c4d", Name: r.GetName(), Spec: r.GetSpec(),
			Status: &listenerdv1.ListenerStatus{State: listenerdv1.State_STATE_LISTENING, BoundAddress: "127.0.0.1:6969"},
		}}, nil
	}}
	sock := startFake(t, svc)

	r := runCtl(t, sock, "listen", "--port", "6969", "--mode", "echo", "--max-connections", "0")
	if r.code != ExitOK || r.stdout != "listening on 127.0.0.1:6969 (id ln-1a2b3c4d)\n" {
		t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	assertProto(t, rec.get(), &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{
		Port:    6969,
		Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Echo{Echo: &listenerdv1.EchoHandler{}}},
		Limits:  &listenerdv1.Limits{MaxConnections: u32(0)},
	}})

	r = runCtl(t, sock, "listen", "--name", "web", "-o", "json")
	var obj struct {
		ID     string `json:"id"`
		Name   string `json:"name"`
		Status struct {
			BoundAddress string `json:"boundAddress"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &obj); err != nil || strings.Count(r.stdout, "\n") != 1 {
		t.Fatalf("json %q: %v", r.stdout, err)
	}
	if obj.ID != "ln-1a2b3c4d" || obj.Name != "web" || obj.Status.BoundAddress != "127.0.0.1:6969" {
		t.Errorf("json: %+v", obj)
	}
}

func TestLsGetConnsKick(t *testing.T) {
	var rec recorder
	svc := &fakeService{
		list: func(context.Context, *listenerdv1.ListListenersRequest) (*listenerdv1.ListListenersResponse, error) {
			return &listenerdv1.ListListenersResponse{Listeners: sampleListeners(), Sequence: 120}, nil
		},
		get: func(_ context.Context, r *listenerdv1.GetListenerRequest) (*listenerdv1.GetListenerResponse, error) {
			rec.set(r)
			return &listenerdv1.GetListenerResponse{Listener: sampleListeners()[0]}, nil
		},
		conns: func(_ context.Context, r *listenerdv1.ListConnectionsRequest) (*listenerdv1.ListConnectionsResponse, error) {
			rec.set(r)
			return &listenerdv1.ListConnectionsResponse{Connections: []*listenerdv1.Connection{{Id: "ln-1.1", Tuple: tuple(5000)}}, Sequence: 121}, nil
		},
		kick: func(_ context.Context, r *listenerdv1.CloseConnectionRequest) (*listenerdv1.CloseConnectionResponse, error) {
			rec.set(r)
			return &listenerdv1.CloseConnectionResponse{}, nil
		},
	}
	sock := startFake(t, svc)

	r := runCtl(t, sock, "ls", "--no-headers")
	if r.code != ExitOK || !strings.HasPrefix(r.stdout, "ln-1a2b3c4d  web") || strings.Count(r.stdout, "\n") != 2 || r.stderr != "" {
		t.Errorf("ls: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	// -v says which sequence the list reflects, on stderr only.
	for args, want := range map[string]string{"ls": "120", "conns web": "121"} {
		quiet, loud := runCtl(t, sock, strings.Fields(args)...), runCtl(t, sock, append(strings.Fields(args), "-v")...)
		if loud.code != ExitOK || loud.stdout != quiet.stdout || loud.stderr != "ctl: as of seq="+want+": ctl watch --since "+want+" goes on from here\n" {
			t.Errorf("%s -v: exit %d, stdout %q, stderr %q", args, loud.code, loud.stdout, loud.stderr)
		}
	}

	r = runCtl(t, sock, "get", "web")
	if r.code != ExitOK || !strings.Contains(r.stdout, "id:               ln-1a2b3c4d\n") {
		t.Errorf("get: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	assertProto(t, rec.get(), &listenerdv1.GetListenerRequest{Id: "web"})

	r = runCtl(t, sock, "conns", "web")
	if r.code != ExitOK || !strings.Contains(r.stdout, "ln-1.1  127.0.0.1:5000  127.0.0.1:6969") {
		t.Errorf("conns: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	assertProto(t, rec.get(), &listenerdv1.ListConnectionsRequest{ListenerId: "web"})

	r = runCtl(t, sock, "kick", "ln-1.1", "--reset")
	if r.code != ExitOK || r.stdout != "reset ln-1.1\n" {
		t.Errorf("kick: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	assertProto(t, rec.get(), &listenerdv1.CloseConnectionRequest{Id: "ln-1.1", Reset_: true})

	r = runCtl(t, sock, "kick", "ln-1.1", "-o", "json")
	if r.code != ExitOK || r.stdout != `{"id":"ln-1.1","reset":false}`+"\n" {
		t.Errorf("kick json: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestLimitAndCloseCommands(t *testing.T) {
	var rec recorder
	svc := &fakeService{
		update: func(_ context.Context, r *listenerdv1.UpdateListenerRequest) (*listenerdv1.UpdateListenerResponse, error) {
			rec.set(r)
			return &listenerdv1.UpdateListenerResponse{Listener: &listenerdv1.Listener{Id: "ln-1", Spec: r.GetListener().GetSpec()}}, nil
		},
		closeL: func(_ context.Context, r *listenerdv1.CloseListenerRequest) (*listenerdv1.CloseListenerResponse, error) {
			rec.set(r)
			return &listenerdv1.CloseListenerResponse{Listener: &listenerdv1.Listener{Id: "ln-1",
				Status: &listenerdv1.ListenerStatus{State: listenerdv1.State_STATE_DRAINING, ActiveConnections: 3}}}, nil
		},
	}
	sock := startFake(t, svc)

	r := runCtl(t, sock, "limit", "web", "--unlimited", "--idle-timeout", "30s")
	if r.code != ExitOK || r.stdout != "limits of ln-1: max-connections=unlimited overflow=reject idle-timeout=30s max-lifetime=none\n" {
		t.Errorf("limit: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	assertProto(t, rec.get(), &listenerdv1.UpdateListenerRequest{
		Listener:   &listenerdv1.Listener{Id: "web", Spec: &listenerdv1.ListenerSpec{Limits: &listenerdv1.Limits{IdleTimeout: durationpb.New(30 * time.Second)}}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"spec.limits.max_connections", "spec.limits.idle_timeout"}},
	})

	r = runCtl(t, sock, "close", "web", "--drain", "0")
	if r.code != ExitOK || r.stdout != "closed ln-1 (destroying 3 connections)\n" {
		t.Errorf("close: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	assertProto(t, rec.get(), &listenerdv1.CloseListenerRequest{Id: "web", DrainTimeout: durationpb.New(0)})
}

func opened(seq uint64) *listenerdv1.Event {
	return &listenerdv1.Event{Sequence: seq, ListenerId: "ln-1", BootId: "b1", Kind: &listenerdv1.Event_ConnectionOpened{
		ConnectionOpened: &listenerdv1.ConnectionOpened{ConnectionId: "ln-1.1", Tuple: tuple(54321)},
	}}
}

func send(s grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse], head uint64, boot string, events ...*listenerdv1.Event) error {
	if err := s.Send(&listenerdv1.WatchEventsResponse{HeadSequence: head, BootId: boot}); err != nil {
		return err
	}
	if len(events) == 0 {
		return nil
	}
	return s.Send(&listenerdv1.WatchEventsResponse{Events: events, BootId: boot})
}

func TestWatchResumes(t *testing.T) {
	var calls atomic.Int32
	svc := &fakeService{}
	svc.watch = func(_ *listenerdv1.WatchEventsRequest, s grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
		switch calls.Add(1) {
		case 1: // from now; cut off for falling behind
			if err := send(s, 5, "b1", opened(6), opened(7)); err != nil {
				return err
			}
			return status.Error(codes.ResourceExhausted, "watcher fell behind")
		case 2: // connection lost after one more event
			if err := send(s, 9, "b1", opened(8)); err != nil {
				return err
			}
			return status.Error(codes.Unavailable, "daemon shutting down")
		case 3: // still down
			return status.Error(codes.Unavailable, "connection refused")
		default: // back: replays 8 (already printed) and 9
			if err := send(s, 9, "b1", opened(8), opened(9)); err != nil {
				return err
			}
			<-s.Context().Done()
			return nil
		}
	}
	sock := startFake(t, svc)
	stdout, stderr, code := runCtlUntil(sock, "seq=9 ", "watch", "ln-00000001", "--kind", "connection_opened")
	if code != ExitOK {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	var seqs []string
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		seqs = append(seqs, strings.Fields(line)[0])
	}
	if got := strings.Join(seqs, ","); got != "seq=6,seq=7,seq=8,seq=9" {
		t.Errorf("printed %s:\n%s", got, stdout.String())
	}
	wantErr := "ctl: watch fell behind and was cut off by listenerd; resuming after seq=7\n" +
		"ctl: lost the connection to listenerd; reconnecting to resume after seq=8\n"
	if stderr.String() != wantErr {
		t.Errorf("stderr %q, want %q", stderr.String(), wantErr)
	}

	reqs := svc.watchRequests()
	if len(reqs) != 4 {
		t.Fatalf("%d watch requests", len(reqs))
	}
	// A watch of ids also asks for listener_closed, to end when they close.
	kinds := []listenerdv1.EventKind{listenerdv1.EventKind_EVENT_KIND_CONNECTION_OPENED, listenerdv1.EventKind_EVENT_KIND_LISTENER_CLOSED}
	after := func(n uint64) *uint64 { return &n }
	for i, want := range []*listenerdv1.WatchEventsRequest{
		{ListenerIds: []string{"ln-00000001"}, Kinds: kinds},
		{ListenerIds: []string{"ln-00000001"}, Kinds: kinds, AfterSequence: after(7), BootId: "b1"},
		{ListenerIds: []string{"ln-00000001"}, Kinds: kinds, AfterSequence: after(8), BootId: "b1"},
		{ListenerIds: []string{"ln-00000001"}, Kinds: kinds, AfterSequence: after(8), BootId: "b1"},
	} {
		if !proto.Equal(reqs[i], want) {
			t.Errorf("request %d: %v, want %v", i, reqs[i], want)
		}
	}
}

// A response's events reach stdout in one write, and each response is
// written as it arrives: a busy stream costs a write per batch, a quiet
// one still shows each event at once.
func TestWatchWritesOncePerResponse(t *testing.T) {
	const batch = 50
	svc := &fakeService{watch: func(_ *listenerdv1.WatchEventsRequest, s grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
		var evs []*listenerdv1.Event
		for i := range batch {
			evs = append(evs, opened(uint64(6+i)))
		}
		if err := send(s, 5, "b1", evs...); err != nil {
			return err
		}
		if err := s.Send(&listenerdv1.WatchEventsResponse{Events: []*listenerdv1.Event{opened(6 + batch)}, BootId: "b1"}); err != nil {
			return err
		}
		<-s.Context().Done()
		return nil
	}}
	sock := startFake(t, svc)
	stdout, stderr, code := runCtlUntil(sock, fmt.Sprintf("seq=%d ", 6+batch), "watch")
	if code != ExitOK {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	if lines := strings.Count(stdout.String(), "\n"); lines != batch+1 {
		t.Fatalf("%d lines, want %d:\n%s", lines, batch+1, stdout.String())
	}
	if n := stdout.Writes(); n != 2 {
		t.Errorf("%d writes to stdout for two responses, want 2", n)
	}
}

func TestWatchJSON(t *testing.T) {
	svc := &fakeService{watch: func(r *listenerdv1.WatchEventsRequest, s grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
		closed := proto.CloneOf(sampleEvents[3].ev)
		closed.Sequence = 5
		if err := send(s, r.GetAfterSequence(), "b1", opened(4), closed); err != nil {
			return err
		}
		<-s.Context().Done()
		return nil
	}}
	sock := startFake(t, svc)
	stdout, stderr, code := runCtlUntil(sock, "connectionClosed", "watch", "--since", "3", "-o", "json")
	if code != ExitOK {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	lines := strings.Split(strings.TrimSuffix(stdout.String(), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines: %q", len(lines), stdout.String())
	}
	for _, l := range lines {
		var ev map[string]any
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("%s: %v", l, err)
		}
	}
	if !strings.HasPrefix(lines[0], `{"sequence":"4",`) {
		t.Errorf("line 0: %s", lines[0])
	}
	if got := svc.watchRequests()[0].GetAfterSequence(); got != 3 {
		t.Errorf("after_sequence %d, want 3", got)
	}
}

func TestWatchEnds(t *testing.T) {
	oor := status.New(codes.OutOfRange, "after_sequence 3 is compacted: oldest held is 50")
	withInfo, err := oor.WithDetails(&errdetails.ErrorInfo{Reason: "COMPACTED", Domain: "listenerd", Metadata: map[string]string{"oldest_sequence": "50"}})
	if err != nil {
		t.Fatal(err)
	}
	ahead, err := status.New(codes.OutOfRange, "after_sequence 99: history holds 1 to 10").WithDetails(&errdetails.ErrorInfo{
		Reason: "SEQUENCE_NOT_HELD", Domain: "listenerd.v1", Metadata: map[string]string{"oldest_sequence": "1", "newest_sequence": "10"},
	})
	if err != nil {
		t.Fatal(err)
	}
	var restartCalls, downCalls atomic.Int32
	tests := []struct {
		name   string
		args   []string
		watch  func(*listenerdv1.WatchEventsRequest, grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error
		exit   int
		stderr string
	}{
		{
			name: "out of range, in words",
			args: []string{"--since", "3"},
			watch: func(*listenerdv1.WatchEventsRequest, grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
				return oor.Err()
			},
			exit:   ExitError,
			stderr: "ctl: cannot resume the watch after seq=3: after_sequence 3 is compacted: oldest held is 50; re-list with 'ctl ls' and watch from now with 'ctl watch'\n",
		},
		{
			name: "ahead of the history",
			args: []string{"--since", "99"},
			watch: func(*listenerdv1.WatchEventsRequest, grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
				return ahead.Err()
			},
			exit:   ExitError,
			stderr: "ctl: cannot watch after seq=99: the newest event listenerd holds is seq=10; re-list with 'ctl ls' and watch from now with 'ctl watch'\n",
		},
		{
			name: "boot id refused by the daemon",
			watch: func(r *listenerdv1.WatchEventsRequest, s grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
				if r.GetBootId() == "" {
					if err := send(s, 5, "b1", opened(6)); err != nil {
						return err
					}
					return status.Error(codes.Unavailable, "shutting down")
				}
				return status.Errorf(codes.OutOfRange, "boot_id %q: the daemon restarted", r.GetBootId())
			},
			exit: ExitError,
			stderr: "ctl: lost the connection to listenerd; reconnecting to resume after seq=6\n" +
				"ctl: cannot resume the watch after seq=6: listenerd restarted (it was boot b1), and the events of its previous run are gone; re-list with 'ctl ls' and watch from now with 'ctl watch'\n",
		},
		{
			name: "out of range with error info",
			args: []string{"--since", "3"},
			watch: func(*listenerdv1.WatchEventsRequest, grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
				return withInfo.Err()
			},
			exit:   ExitError,
			stderr: "ctl: cannot resume the watch after seq=3: listenerd no longer holds events before seq=50; re-list with 'ctl ls' and watch from now with 'ctl watch'\n",
		},
		{
			name: "fails at once on a daemon it never reached",
			watch: func(*listenerdv1.WatchEventsRequest, grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
				return status.Error(codes.Unavailable, "down")
			},
			exit:   ExitUnavailable,
			stderr: "ctl: cannot reach listenerd at SOCK — is the daemon running? start it with: go run ./daemon\n",
		},
		{
			name: "gives up on a daemon that stays unreachable",
			watch: func(_ *listenerdv1.WatchEventsRequest, s grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
				if downCalls.Add(1) == 1 {
					if err := send(s, 3, "b1"); err != nil {
						return err
					}
				}
				return status.Error(codes.Unavailable, "down")
			},
			exit:   ExitUnavailable,
			stderr: "ctl: lost the connection to listenerd; reconnecting to resume after seq=3\nctl: cannot reach listenerd at SOCK — is the daemon running? start it with: go run ./daemon\n",
		},
		{
			name: "daemon restarted",
			watch: func(_ *listenerdv1.WatchEventsRequest, s grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
				if restartCalls.Add(1) == 1 {
					if err := send(s, 5, "b1", opened(6)); err != nil {
						return err
					}
					return status.Error(codes.Unavailable, "shutting down")
				}
				return send(s, 0, "b2")
			},
			// Without --since the watch goes on with the new daemon's
			// events; this one then ends its stream.
			exit: ExitOK,
			stderr: "ctl: lost the connection to listenerd; reconnecting to resume after seq=6\n" +
				"ctl: listenerd restarted (boot b1, now b2): events after seq=6 were missed; watching the new daemon's events from now\n" +
				"ctl: listenerd ended the event stream\n",
		},
		{
			name: "daemon ends the stream",
			watch: func(_ *listenerdv1.WatchEventsRequest, s grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
				return send(s, 5, "b1")
			},
			exit:   ExitOK,
			stderr: "ctl: listenerd ended the event stream\n",
		},
		{
			name: "other errors end the watch",
			args: []string{"ln-0000dead"},
			watch: func(*listenerdv1.WatchEventsRequest, grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
				return status.Error(codes.NotFound, `listener "nope" not found`)
			},
			exit:   ExitNotFound,
			stderr: "ctl: listener \"nope\" not found\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock := startFake(t, &fakeService{watch: tt.watch})
			r := runCtl(t, sock, append([]string{"watch"}, tt.args...)...)
			want := strings.ReplaceAll(tt.stderr, "SOCK", sock)
			if r.code != tt.exit || r.stderr != want {
				t.Errorf("exit %d, stderr %q; want %d, %q", r.code, r.stderr, tt.exit, want)
			}
			if r.stdout != "" && !strings.Contains(tt.name, "restarted") && !strings.Contains(tt.name, "boot id") {
				t.Errorf("stdout %q", r.stdout)
			}
		})
	}
}

func TestListenFollow(t *testing.T) {
	svc := &fakeService{
		create: func(_ context.Context, r *listenerdv1.CreateListenerRequest) (*listenerdv1.CreateListenerResponse, error) {
			return &listenerdv1.CreateListenerResponse{Listener: &listenerdv1.Listener{Id: "ln-1", Name: r.GetName(),
				Status: &listenerdv1.ListenerStatus{BoundAddress: "127.0.0.1:6969"}}}, nil
		},
		watch: func(r *listenerdv1.WatchEventsRequest, s grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
			if len(r.GetListenerIds()) == 0 { // the head probe before create
				if err := send(s, 10, "b1"); err != nil {
					return err
				}
				<-s.Context().Done()
				return nil
			}
			if r.GetListenerIds()[0] != "ln-1" || r.AfterSequence == nil || r.GetAfterSequence() != 10 || r.GetBootId() != "b1" {
				return status.Errorf(codes.InvalidArgument, "unexpected follow request %v", r)
			}
			evs := []*listenerdv1.Event{sampleEvents[0].ev, sampleEvents[1].ev, sampleEvents[3].ev, sampleEvents[5].ev, sampleEvents[8].ev}
			for i, ev := range evs {
				ev = proto.CloneOf(ev)
				ev.Sequence = 11 + uint64(i)
				evs[i] = ev
			}
			if err := send(s, 10, "b1", evs...); err != nil {
				return err
			}
			<-s.Context().Done() // the client ends by itself after listener_closed
			return nil
		},
	}
	sock := startFake(t, svc)
	r := runCtl(t, sock, "listen", "--name", "web", "--follow")
	want := `listening on 127.0.0.1:6969 (id ln-1, name web)
CONNECTED: 127.0.0.1:54321
CLOSED: 127.0.0.1:54321 (peer closed, in 18 B, out 18 B, 1.2s)
REJECTED: 127.0.0.1:54323 (max connections)
SERVER CLOSED (2 drained, 1 destroyed)
`
	if r.code != ExitOK || r.stdout != want || r.stderr != "" {
		t.Errorf("exit %d, stderr %q, stdout:\n%s\nwant:\n%s", r.code, r.stderr, r.stdout, want)
	}
}

func TestFollowCtrlC(t *testing.T) {
	svc := &fakeService{
		create: func(context.Context, *listenerdv1.CreateListenerRequest) (*listenerdv1.CreateListenerResponse, error) {
			return &listenerdv1.CreateListenerResponse{Listener: &listenerdv1.Listener{Id: "ln-1",
				Status: &listenerdv1.ListenerStatus{BoundAddress: "127.0.0.1:6969"}}}, nil
		},
		watch: func(r *listenerdv1.WatchEventsRequest, s grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
			if len(r.GetListenerIds()) == 0 {
				return send(s, 0, "b1")
			}
			if err := send(s, 0, "b1", opened(1)); err != nil {
				return err
			}
			<-s.Context().Done()
			return nil
		},
	}
	sock := startFake(t, svc)
	_, stderr, code := runCtlUntil(sock, "CONNECTED: ", "listen", "-f")
	if code != ExitOK {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
}
