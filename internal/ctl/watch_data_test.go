package ctl

import (
	"testing"

	"google.golang.org/grpc"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

func TestWatchDataFlags(t *testing.T) {
	svc := &fakeService{watch: func(_ *listenerdv1.WatchEventsRequest, s grpc.ServerStreamingServer[listenerdv1.WatchEventsResponse]) error {
		return send(s, 1, "b1", &listenerdv1.Event{Sequence: 2, ListenerId: "ln-1", BootId: "b1",
			Kind: &listenerdv1.Event_ConnectionData{ConnectionData: &listenerdv1.ConnectionData{
				ConnectionId: "ln-1.1", Direction: listenerdv1.Direction_DIRECTION_IN, Data: []byte("hi"), Length: 2}}})
	}}
	sock := startFake(t, svc)
	tests := []struct {
		args    []string
		data    bool
		dataMax uint32
		kinds   int
	}{
		{[]string{"watch"}, false, 0, 0},
		{[]string{"watch", "--data"}, true, 0, 0},
		{[]string{"watch", "--data-max", "1024"}, true, 1024, 0},
		{[]string{"watch", "--data", "--kind", "connection_opened"}, true, 0, 2},
		{[]string{"watch", "--kind", "connection_data"}, true, 0, 1},
	}
	for i, tt := range tests {
		r := runCtl(t, sock, tt.args...)
		if r.code != ExitOK {
			t.Fatalf("%v: exit %d, stderr %q", tt.args, r.code, r.stderr)
		}
		req := svc.watchRequests()[i]
		if req.GetIncludeData() != tt.data || req.GetDataMaxBytes() != tt.dataMax || len(req.GetKinds()) != tt.kinds {
			t.Errorf("%v: request %v", tt.args, req)
		}
		if tt.data && r.stdout != "seq=2 ln-1 connection_data c=ln-1.1 in len=2 data=\"hi\"\n" {
			t.Errorf("%v: stdout %q", tt.args, r.stdout)
		}
	}
	for _, args := range [][]string{{"watch", "--data-max", "0"}, {"watch", "--data-max", "70000"}, {"watch", "--data=false", "--data-max", "9"}} {
		if r := runCtl(t, sock, args...); r.code != ExitUsage {
			t.Errorf("%v: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
}
