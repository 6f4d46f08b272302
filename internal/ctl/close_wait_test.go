package ctl

import (
	"context"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// eventLog records what a fake saw, from its handlers' goroutines.
type eventLog struct {
	mu   sync.Mutex
	what []string
}

func (l *eventLog) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.what = append(l.what, s)
}

func (l *eventLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.what, ";")
}

// closeWaitFake answers a watch with its head, records whether CloseListener
// came after the watch was registered, and then sends listener_closed.
func closeWaitFake(order *eventLog) *fakeService {
	closedc := make(chan struct{}, 1)
	var rec recorder
	return &fakeService{
		closeL: func(_ context.Context, r *listenerdv1.CloseListenerRequest) (*listenerdv1.CloseListenerResponse, error) {
			rec.set(r)
			order.add("close")
			closedc <- struct{}{}
			return &listenerdv1.CloseListenerResponse{Listener: &listenerdv1.Listener{Id: "ln-1",
				Status: &listenerdv1.ListenerStatus{State: listenerdv1.State_STATE_DRAINING, ActiveConnections: 2}}}, nil
		},
		watch: func(r *listenerdv1.WatchEventsRequest, s grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
			order.add("watch " + strings.Join(r.GetListenerIds(), ","))
			if err := send(s, 7, "b1"); err != nil {
				return err
			}
			select {
			case <-closedc:
			case <-s.Context().Done():
				return nil
			}
			return s.Send(&listenerdv1.WatchEventsResponse{BootId: "b1", Events: []*listenerdv1.Event{{
				Sequence: 9, ListenerId: "ln-1", BootId: "b1",
				Kind: &listenerdv1.Event_ListenerClosed{ListenerClosed: &listenerdv1.ListenerClosed{Drained: 1, Destroyed: 1}},
			}}})
		},
	}
}

func TestCloseWait(t *testing.T) {
	var order eventLog
	svc := closeWaitFake(&order)
	sock := startFake(t, svc)

	r := runCtl(t, sock, "close", "web", "--drain", "5s", "--wait")
	if r.code != ExitOK || r.stdout != "closed ln-1 (draining 2 connections)\nln-1 closed: 1 connection drained, 1 destroyed\n" {
		t.Fatalf("close --wait: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if got := order.String(); got != "watch web;close" {
		t.Errorf("order %q: the watch must be registered before the close", got)
	}
	reqs := svc.watchRequests()
	if got := reqs[0].GetKinds(); len(got) != 1 || got[0] != listenerdv1.EventKind_EVENT_KIND_LISTENER_CLOSED {
		t.Errorf("watch kinds %v", got)
	}

	r = runCtl(t, sock, "close", "web", "--force", "--wait", "-o", "json")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != ExitOK || len(lines) != 2 || !strings.HasPrefix(lines[0], `{"id":"ln-1"`) || !strings.Contains(lines[1], `"listenerClosed"`) {
		t.Errorf("close --wait -o json: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestCloseWaitNotFound(t *testing.T) {
	svc := &fakeService{
		closeL: func(context.Context, *listenerdv1.CloseListenerRequest) (*listenerdv1.CloseListenerResponse, error) {
			return nil, status.Error(codes.NotFound, `listener "nope" not found`)
		},
		watch: func(_ *listenerdv1.WatchEventsRequest, s grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
			if err := send(s, 1, "b1"); err != nil {
				return err
			}
			<-s.Context().Done()
			return nil
		},
	}
	sock := startFake(t, svc)
	r := runCtl(t, sock, "close", "nope", "--wait")
	if r.code != ExitNotFound || r.stderr != "ctl: listener \"nope\" not found\n" || r.stdout != "" {
		t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}
