package ctl

import (
	"errors"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

func u32(n uint32) *uint32 { return &n }

func assertProto(t *testing.T, got, want proto.Message) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", prototext.Format(got), prototext.Format(want))
	}
}

func assertUsage(t *testing.T, err error) {
	t.Helper()
	var ue *usageError
	if !errors.As(err, &ue) {
		t.Fatalf("err = %v, want a usage error", err)
	}
}

func TestListenRequest(t *testing.T) {
	echo := &listenerdv1.Handler{Kind: &listenerdv1.Handler_Echo{Echo: &listenerdv1.EchoHandler{}}}
	tests := []struct {
		name string
		args []string
		want *listenerdv1.CreateListenerRequest
	}{
		{
			name: "defaults leave everything to the daemon",
			args: nil,
			want: &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{}},
		},
		{
			name: "port host name",
			args: []string{"--port", "6969", "--host", "0.0.0.0", "--name", "web"},
			want: &listenerdv1.CreateListenerRequest{Name: "web", Spec: &listenerdv1.ListenerSpec{Host: "0.0.0.0", Port: 6969}},
		},
		{
			name: "max-connections 0 is present, not unlimited",
			args: []string{"--max-connections", "0"},
			want: &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{
				Limits: &listenerdv1.Limits{MaxConnections: u32(0)},
			}},
		},
		{
			name: "all limits",
			args: []string{"--max-connections", "5", "--overflow", "backlog", "--idle-timeout", "30s", "--max-lifetime", "1h"},
			want: &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{
				Limits: &listenerdv1.Limits{
					MaxConnections: u32(5),
					Overflow:       listenerdv1.OverflowPolicy_OVERFLOW_POLICY_BACKLOG,
					IdleTimeout:    durationpb.New(30 * time.Second),
					MaxLifetime:    durationpb.New(time.Hour),
				},
			}},
		},
		{
			name: "echo mode, options, backlog",
			args: []string{"--mode", "echo", "--allow-half-open", "--pause-on-connect", "--backlog", "0"},
			want: &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{
				Handler: echo, AllowHalfOpen: true, PauseOnConnect: true, Backlog: u32(0),
			}},
		},
		{
			name: "upstream implies forward",
			args: []string{"--upstream", "127.0.0.1:80"},
			want: &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{
				Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Forward{Forward: &listenerdv1.ForwardHandler{Upstream: "127.0.0.1:80"}}},
			}},
		},
		{
			name: "discard explicit",
			args: []string{"--mode", "DISCARD"},
			want: &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{
				Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Discard{Discard: &listenerdv1.DiscardHandler{}}},
			}},
		},
		{
			name: "cidrs repeat and split on commas",
			args: []string{"--allow", "10.0.0.0/8", "--allow", "192.168.0.0/16,::1/128", "--deny", "10.1.0.0/16"},
			want: &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{
				AllowCidrs: []string{"10.0.0.0/8", "192.168.0.0/16", "::1/128"},
				DenyCidrs:  []string{"10.1.0.0/16"},
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var o listenOptions
			fs := pflag.NewFlagSet("listen", pflag.ContinueOnError)
			o.addFlags(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			got, err := o.request(fs)
			if err != nil {
				t.Fatal(err)
			}
			assertProto(t, got, tt.want)
		})
	}
}

func TestListenRequestErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--mode", "forward"},
		{"--mode", "echo", "--upstream", "127.0.0.1:80"},
		{"--mode", "bounce"},
		{"--overflow", "drop"},
		{"--name", ""},
		{"--deny", ""},
		{"--allow", "10.0.0.0/8,"},
		{"--keepalive", "-1s"},
	} {
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

func TestLimitRequest(t *testing.T) {
	tests := []struct {
		args   []string
		limits *listenerdv1.Limits
		paths  []string
	}{
		{[]string{"--max-connections", "5"}, &listenerdv1.Limits{MaxConnections: u32(5)}, []string{"spec.limits.max_connections"}},
		{[]string{"--max-connections", "0"}, &listenerdv1.Limits{MaxConnections: u32(0)}, []string{"spec.limits.max_connections"}},
		{[]string{"--unlimited"}, &listenerdv1.Limits{}, []string{"spec.limits.max_connections"}},
		{[]string{"--overflow", "reject"}, &listenerdv1.Limits{Overflow: listenerdv1.OverflowPolicy_OVERFLOW_POLICY_REJECT}, []string{"spec.limits.overflow"}},
		{
			[]string{"--unlimited", "--idle-timeout", "0", "--max-lifetime", "2m"},
			&listenerdv1.Limits{IdleTimeout: durationpb.New(0), MaxLifetime: durationpb.New(2 * time.Minute)},
			[]string{"spec.limits.max_connections", "spec.limits.idle_timeout", "spec.limits.max_lifetime"},
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

	for _, args := range [][]string{nil, {"--unlimited=false"}, {"--unlimited", "--max-connections", "3"}, {"--overflow", "x"}} {
		var o limitOptions
		fs := pflag.NewFlagSet("limit", pflag.ContinueOnError)
		o.addFlags(fs)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		_, err := o.request("web", fs)
		assertUsage(t, err)
	}
}

func TestCloseRequest(t *testing.T) {
	parse := func(args ...string) (*listenerdv1.CloseListenerRequest, error) {
		var drain time.Duration
		var force bool
		fs := pflag.NewFlagSet("close", pflag.ContinueOnError)
		fs.DurationVar(&drain, "drain", 0, "")
		fs.BoolVar(&force, "force", false, "")
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		return closeRequest("ln-1", fs, drain, force)
	}
	got, err := parse()
	if err != nil {
		t.Fatal(err)
	}
	assertProto(t, got, &listenerdv1.CloseListenerRequest{Id: "ln-1"})

	got, err = parse("--drain", "0")
	if err != nil {
		t.Fatal(err)
	}
	assertProto(t, got, &listenerdv1.CloseListenerRequest{Id: "ln-1", DrainTimeout: durationpb.New(0)})

	got, err = parse("--drain", "5s")
	if err != nil {
		t.Fatal(err)
	}
	assertProto(t, got, &listenerdv1.CloseListenerRequest{Id: "ln-1", DrainTimeout: durationpb.New(5 * time.Second)})

	got, err = parse("--force")
	if err != nil {
		t.Fatal(err)
	}
	assertProto(t, got, &listenerdv1.CloseListenerRequest{Id: "ln-1", Force: true})

	_, err = parse("--force", "--drain", "1s")
	assertUsage(t, err)
}

func TestWatchRequest(t *testing.T) {
	got, err := watchRequest([]string{"ln-1", "web"}, []string{"connection_opened", "connection-closed", "EVENT_KIND_LISTENER_CLOSED", "Accept_Error"})
	if err != nil {
		t.Fatal(err)
	}
	assertProto(t, got, &listenerdv1.WatchEventsRequest{
		ListenerIds: []string{"ln-1", "web"},
		Kinds: []listenerdv1.EventKind{
			listenerdv1.EventKind_EVENT_KIND_CONNECTION_OPENED,
			listenerdv1.EventKind_EVENT_KIND_CONNECTION_CLOSED,
			listenerdv1.EventKind_EVENT_KIND_LISTENER_CLOSED,
			listenerdv1.EventKind_EVENT_KIND_ACCEPT_ERROR,
		},
	})
	for _, bad := range []string{"unspecified", "opened", ""} {
		_, err := watchRequest(nil, []string{bad})
		assertUsage(t, err)
	}
}
