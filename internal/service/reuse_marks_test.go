package service

import (
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// badField is the field a status error's BadRequest detail names, "" when
// it has none.
func badField(err error) string {
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
			return br.GetFieldViolations()[0].GetField()
		}
	}
	return ""
}

// A reused stream's marks out of turn end it with INVALID_ARGUMENT naming
// the field at fault: the message the handler sent, not another.
func TestReusedStreamMarksOutOfTurnNameTheField(t *testing.T) {
	c := tcpClient(t)
	lid, addr := createStreamListener(t, c, "marks", 0)
	h := attachRaw(t, c, ctx(t), lid)
	take := func(conn string) *listenerdv1.ServeConnectionRequest {
		return &listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Take{
			Take: &listenerdv1.Take{HandlerId: h.id, ConnectionId: conn, Reuse: true}}}
	}
	release := &listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Release{Release: &listenerdv1.Release{}}}
	for _, tc := range []struct {
		name    string
		serve   bool // a connection is served and closed first
		message *listenerdv1.ServeConnectionRequest
		field   string
	}{
		{"take before any closed", false, take(""), "take"},
		{"release before any closed", false, release, "release"},
		{"later take naming a connection", true, take(lid + ".1"), "take.connection_id"},
	} {
		s, err := c.ServeConnection(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(take("")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Header(); err != nil {
			t.Fatal(err)
		}
		if tc.serve {
			peer := testkit.Dial(t, addr)
			if m, err := s.Recv(); err != nil || m.GetOpened() == nil {
				t.Fatalf("%s: %v, %v; want opened", tc.name, m, err)
			}
			_ = peer.SetLinger(0)
			_ = peer.Close() // a reset: it closes with no end from the handler
			for {
				m, err := s.Recv()
				if err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				if m.GetClosed() != nil {
					break
				}
			}
		}
		if err := s.Send(tc.message); err != nil {
			t.Fatal(err)
		}
		for err == nil {
			_, err = s.Recv()
		}
		if status.Code(err) != codes.InvalidArgument || badField(err) != tc.field {
			t.Errorf("%s: the stream ended with %v (field %q); want INVALID_ARGUMENT naming %s", tc.name, err, badField(err), tc.field)
		}
	}
}
