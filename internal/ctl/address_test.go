package ctl

import (
	"testing"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// A listener that is not bound shows what it asked for, and port 0 as "*"
// (any port), never as a port 0 it would seem to be bound to.
func TestAddressOfUnboundListener(t *testing.T) {
	for _, tc := range []struct {
		l    *listenerdv1.Listener
		want string
	}{
		{&listenerdv1.Listener{Status: &listenerdv1.ListenerStatus{BoundAddress: "127.0.0.1:43121"}}, "127.0.0.1:43121"},
		{&listenerdv1.Listener{Spec: &listenerdv1.ListenerSpec{}}, "127.0.0.1:*"},
		{&listenerdv1.Listener{Spec: &listenerdv1.ListenerSpec{Host: "::"}}, "[::]:*"},
		{&listenerdv1.Listener{Spec: &listenerdv1.ListenerSpec{Host: "::1", Port: 80}}, "[::1]:80"},
	} {
		if got := address(tc.l); got != tc.want {
			t.Errorf("address(%v) = %q, want %q", tc.l, got, tc.want)
		}
	}
}
