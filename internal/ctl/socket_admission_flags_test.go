package ctl

import (
	"testing"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

func TestListenRequestSocketAndAdmissionFlags(t *testing.T) {
	tests := []struct {
		args []string
		want *listenerdv1.ListenerSpec
	}{
		{
			[]string{"--accept-rate", "2.5", "--accept-burst", "5", "--max-per-source", "3"},
			&listenerdv1.ListenerSpec{Limits: &listenerdv1.Limits{AcceptRate: 2.5, AcceptBurst: 5, MaxConnectionsPerSource: u32(3)}},
		},
		{
			// 0 per source is no limit: the field stays unset.
			[]string{"--max-per-source", "0"},
			&listenerdv1.ListenerSpec{},
		},
		{
			[]string{"--no-delay=false", "--keepalive", "1m"},
			&listenerdv1.ListenerSpec{NoDelay: new(false), Keepalive: durationpb.New(time.Minute)},
		},
		{
			[]string{"--no-delay", "--keepalive", "0"},
			&listenerdv1.ListenerSpec{NoDelay: new(true), Keepalive: durationpb.New(0)},
		},
	}
	for _, tt := range tests {
		var o listenOptions
		fs := pflag.NewFlagSet("listen", pflag.ContinueOnError)
		o.addFlags(fs)
		if err := fs.Parse(tt.args); err != nil {
			t.Fatal(err)
		}
		got, err := o.request(fs)
		if err != nil {
			t.Fatalf("%v: %v", tt.args, err)
		}
		assertProto(t, got, &listenerdv1.CreateListenerRequest{Spec: tt.want})
	}
	for _, args := range [][]string{{"--accept-rate", "-1"}, {"--keepalive", "-1s"}} {
		var o listenOptions
		fs := pflag.NewFlagSet("listen", pflag.ContinueOnError)
		o.addFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		_, err := o.request(fs)
		assertUsage(t, err)
	}
}

func TestLimitRequestAdmissionFlags(t *testing.T) {
	tests := []struct {
		args   []string
		limits *listenerdv1.Limits
		paths  []string
	}{
		{
			[]string{"--accept-rate", "10", "--accept-burst", "20", "--max-per-source", "2"},
			&listenerdv1.Limits{AcceptRate: 10, AcceptBurst: 20, MaxConnectionsPerSource: u32(2)},
			[]string{"spec.limits.accept_rate", "spec.limits.accept_burst", "spec.limits.max_connections_per_source"},
		},
		{
			// 0 removes each limit: the paths are named, the fields unset.
			[]string{"--accept-rate", "0", "--max-per-source", "0"},
			&listenerdv1.Limits{},
			[]string{"spec.limits.accept_rate", "spec.limits.max_connections_per_source"},
		},
	}
	for _, tt := range tests {
		var o limitOptions
		fs := pflag.NewFlagSet("limit", pflag.ContinueOnError)
		o.addFlags(fs)
		if err := fs.Parse(tt.args); err != nil {
			t.Fatal(err)
		}
		got, err := o.request("web", fs)
		if err != nil {
			t.Fatalf("%v: %v", tt.args, err)
		}
		assertProto(t, got, &listenerdv1.UpdateListenerRequest{
			Listener:   &listenerdv1.Listener{Id: "web", Spec: &listenerdv1.ListenerSpec{Limits: tt.limits}},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: tt.paths},
		})
	}
	if got := limitsLine(&listenerdv1.Limits{AcceptRate: 10, AcceptBurst: 20, MaxConnectionsPerSource: u32(2)}); got !=
		"max-connections=unlimited overflow=reject idle-timeout=none max-lifetime=none accept-rate=10/s accept-burst=20 max-per-source=2" {
		t.Errorf("limitsLine = %q", got)
	}
	if got := limitsLine(&listenerdv1.Limits{AcceptBurst: 5}); got !=
		"max-connections=unlimited overflow=reject idle-timeout=none max-lifetime=none accept-burst=5 (kept; no accept-rate to apply it to)" {
		t.Errorf("limitsLine of a burst with no rate = %q", got)
	}
}
