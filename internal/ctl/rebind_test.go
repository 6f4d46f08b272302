package ctl

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// rebindFake adds RebindListener to fakeService.
type rebindFake struct {
	*fakeService
	rebind func(context.Context, *listenerdv1.RebindListenerRequest) (*listenerdv1.RebindListenerResponse, error)
}

func (f *rebindFake) RebindListener(ctx context.Context, r *listenerdv1.RebindListenerRequest) (*listenerdv1.RebindListenerResponse, error) {
	return f.rebind(ctx, r)
}

func TestRebindCommand(t *testing.T) {
	var rec recorder
	svc := &rebindFake{fakeService: &fakeService{}, rebind: func(_ context.Context, r *listenerdv1.RebindListenerRequest) (*listenerdv1.RebindListenerResponse, error) {
		rec.set(r)
		if r.GetId() == "nope" {
			return nil, status.Error(codes.NotFound, `listener "nope" not found`)
		}
		if r.GetId() == "busy" {
			return nil, status.Error(codes.FailedPrecondition, "address in use: listen tcp 127.0.0.1:6969: bind: address already in use")
		}
		return &listenerdv1.RebindListenerResponse{Listener: &listenerdv1.Listener{Id: "ln-1a2b3c4d", Name: "web",
			Status: &listenerdv1.ListenerStatus{State: listenerdv1.State_STATE_LISTENING, BoundAddress: "127.0.0.1:6969"}}}, nil
	}}
	sock := startFake(t, svc)

	r := runCtl(t, sock, "rebind", "web")
	if r.code != ExitOK || r.stdout != "listening on 127.0.0.1:6969 (id ln-1a2b3c4d, rebound)\n" {
		t.Errorf("rebind: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	assertProto(t, rec.get(), &listenerdv1.RebindListenerRequest{Id: "web"})
	r = runCtl(t, sock, "rebind", "web", "-o", "json")
	if r.code != ExitOK || !strings.HasPrefix(r.stdout, `{"id":"ln-1a2b3c4d"`) || strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("rebind json: exit %d, stdout %q", r.code, r.stdout)
	}
	r = runCtl(t, sock, "rebind", "nope")
	if r.code != ExitNotFound || r.stderr != "ctl: listener \"nope\" not found\n" {
		t.Errorf("rebind nope: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCtl(t, sock, "rebind", "busy")
	if r.code != ExitError || !strings.Contains(r.stderr, "address already in use") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("rebind busy: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCtl(t, sock, "rebind")
	if r.code != ExitUsage {
		t.Errorf("rebind without id: exit %d, stderr %q", r.code, r.stderr)
	}
}
