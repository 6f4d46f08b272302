package service

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/listener"
)

// FuzzCreateListenerRequest feeds arbitrary wire bytes through the request
// validation: it never panics, every refusal is an invalid argument naming
// a field, and what passes is within bounds.
func FuzzCreateListenerRequest(f *testing.F) {
	seeds := []*listenerdv1.CreateListenerRequest{
		{Name: "web", Spec: echoSpec()},
		{Spec: &listenerdv1.ListenerSpec{Port: 70000}},
		{Spec: &listenerdv1.ListenerSpec{AllowCidrs: []string{"10.0.0.0/8", "::1", "bad"}, Backlog: u32(0)}},
		{Spec: &listenerdv1.ListenerSpec{Limits: &listenerdv1.Limits{IdleTimeout: durationpb.New(-1), AcceptRate: -1}}},
		{Spec: &listenerdv1.ListenerSpec{Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Forward{Forward: &listenerdv1.ForwardHandler{Upstream: "x:1"}}}}},
	}
	for _, s := range seeds {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var req listenerdv1.CreateListenerRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		check := func(err error) {
			var fe *listener.FieldError
			if !errors.As(err, &fe) || fe.Field == "" {
				t.Fatalf("refusal without a field: %v", err)
			}
		}
		if err := listener.ValidateName(req.GetName()); err != nil {
			check(err)
		}
		spec, err := specFromProto(req.GetSpec())
		if err != nil {
			check(err)
			return
		}
		if spec.Backlog < 0 || spec.Backlog > listener.MaxBacklog ||
			spec.Limits.IdleTimeout < 0 || spec.Limits.MaxLifetime < 0 ||
			spec.Limits.AcceptRate < 0 || len(spec.Allow) > maxCIDRs || len(spec.Deny) > maxCIDRs {
			t.Fatalf("out-of-bounds spec accepted: %+v", spec)
		}
		// What passes converts back without loss of the port.
		if back := specToProto(spec); back.GetPort() != req.GetSpec().GetPort() {
			t.Fatalf("port %d came back as %d", req.GetSpec().GetPort(), back.GetPort())
		}
	})
}
