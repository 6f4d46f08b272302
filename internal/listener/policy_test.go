package listener

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/listenerd/listenerd/internal/events"
)

func mustPolicy(t *testing.T, ports, hosts string, noPriv bool) Policy {
	t.Helper()
	pr, err := ParsePorts(ports)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := ParseHosts(hosts)
	if err != nil {
		t.Fatal(err)
	}
	return Policy{Ports: pr, Hosts: hs, NoPrivileged: noPriv}
}

func TestPolicyCheck(t *testing.T) {
	for _, tc := range []struct {
		name         string
		ports, hosts string
		noPriv       bool
		ip           string
		port         uint16
		field        string // "" when allowed
	}{
		{"zero policy allows anything", "", "", false, "0.0.0.0", 80, ""},
		{"in range", "8000-8999", "", false, "127.0.0.1", 8080, ""},
		{"range edges", "8000-8999", "", false, "127.0.0.1", 8999, ""},
		{"below range", "8000-8999", "", false, "127.0.0.1", 7999, "spec.port"},
		{"above range", "8000-8999", "", false, "127.0.0.1", 9000, "spec.port"},
		{"ephemeral refused by a range without 0", "1024-65535", "", false, "127.0.0.1", 0, "spec.port"},
		{"ephemeral allowed when 0 listed", "0,1024-65535", "", false, "127.0.0.1", 0, ""},
		{"single port", "443", "", false, "127.0.0.1", 443, ""},
		{"privileged refused", "", "", true, "127.0.0.1", 80, "spec.port"},
		{"port 1023 privileged", "", "", true, "127.0.0.1", 1023, "spec.port"},
		{"port 1024 not privileged", "", "", true, "127.0.0.1", 1024, ""},
		{"ephemeral is not privileged", "", "", true, "127.0.0.1", 0, ""},
		{"privileged refused even when in range", "1-65535", "", true, "127.0.0.1", 22, "spec.port"},
		{"loopback allowed", "", "127.0.0.1,::1", false, "127.0.0.1", 1, ""},
		{"v6 loopback allowed", "", "127.0.0.1,::1", false, "::1", 1, ""},
		{"wildcard refused", "", "127.0.0.1,::1", false, "0.0.0.0", 1, "spec.host"},
		{"v6 wildcard refused", "", "127.0.0.1,::1", false, "::", 1, "spec.host"},
		{"wildcard not allowed by 0.0.0.0/0", "", "0.0.0.0/0", false, "0.0.0.0", 1, "spec.host"},
		{"any v4 address allowed by 0.0.0.0/0", "", "0.0.0.0/0", false, "10.1.2.3", 1, ""},
		{"wildcard allowed when listed", "", "127.0.0.1,0.0.0.0", false, "0.0.0.0", 1, ""},
		{"prefix", "", "10.0.0.0/8", false, "10.9.8.7", 1, ""},
		{"outside prefix", "", "10.0.0.0/8", false, "192.168.1.1", 1, "spec.host"},
		{"v4-mapped address matched as v4", "", "127.0.0.0/8", false, "::ffff:127.0.0.1", 1, ""},
		{"port checked before host", "8000", "127.0.0.1", false, "0.0.0.0", 1, "spec.port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustPolicy(t, tc.ports, tc.hosts, tc.noPriv)
			err := p.Check(netip.MustParseAddr(tc.ip), tc.port)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var pe *PolicyError
			if !errors.As(err, &pe) || pe.Field != tc.field || !errors.Is(err, ErrPermission) || errors.Is(err, ErrInvalid) {
				t.Fatalf("got %v, want a permission error on %s", err, tc.field)
			}
			if !strings.HasPrefix(err.Error(), tc.field+": ") {
				t.Fatalf("message %q does not start with the field", err)
			}
		})
	}
}

func TestParsePolicyFlags(t *testing.T) {
	for _, bad := range []string{"x", "1-", "-1", "9-1", "65536", "1-70000", "80,,81", " - "} {
		if _, err := ParsePorts(bad); err == nil {
			t.Errorf("ParsePorts(%q) accepted", bad)
		}
	}
	got, err := ParsePorts(" 0, 80 ,8000-8999")
	if err != nil || len(got) != 3 || got[0] != (PortRange{0, 0}) || got[1] != (PortRange{80, 80}) || got[2] != (PortRange{8000, 8999}) {
		t.Fatalf("ParsePorts: %v, %v", got, err)
	}
	for _, bad := range []string{"localhost", "10.0.0.0/33", "fe80::1%eth0", "1.2.3", "127.0.0.1,"} {
		if _, err := ParseHosts(bad); err == nil {
			t.Errorf("ParseHosts(%q) accepted", bad)
		}
	}
	hs, err := ParseHosts("127.0.0.1, 10.0.0.0/8 ,::1")
	if err != nil || len(hs) != 3 || hs[1].String() != "10.0.0.0/8" || !hs[0].IsSingleIP() {
		t.Fatalf("ParseHosts: %v, %v", hs, err)
	}
	// Host bits are refused, not masked quietly.
	if _, err := ParseHosts("127.0.0.1,10.1.2.3/8"); err == nil ||
		err.Error() != `host "10.1.2.3/8" has host bits set: did you mean the network 10.0.0.0/8 (or 10.1.2.3/32, that one host)?` {
		t.Fatalf("ParseHosts with host bits: %v", err)
	}
	if s := (Policy{}).String(); s != "any" {
		t.Fatalf("zero policy reads %q", s)
	}
}

// A create the policy refuses leaves nothing behind: no listener, no
// event, no save, and the port was never bound.
func TestCreateRefusedByPolicyLeavesNothing(t *testing.T) {
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(free.Addr().(*net.TCPAddr).Port)
	free.Close()

	st := &memStore{}
	bus := events.NewBus(events.Options{})
	m := NewManager(bus, nil, Options{Persister: st, Policy: mustPolicy(t, "2000", "127.0.0.1", true)})
	t.Cleanup(func() { m.Shutdown(0) })
	head := bus.Head()
	for _, tc := range []struct {
		spec  Spec
		field string
	}{
		{Spec{Port: port}, "spec.port"},
		{Spec{Port: 80}, "spec.port"},
		{Spec{Host: "0.0.0.0", Port: 2000}, "spec.host"},
		{Spec{Host: "localhost", Port: 1}, "spec.port"},
	} {
		_, err := m.Create(context.Background(), "web", tc.spec)
		var pe *PolicyError
		if !errors.As(err, &pe) || pe.Field != tc.field {
			t.Fatalf("create %+v: %v, want a policy error on %s", tc.spec, err, tc.field)
		}
	}
	if ls, _ := m.List(); len(ls) != 0 {
		t.Fatalf("listeners after refusals: %v", ls)
	}
	if st.saved() != nil {
		t.Fatal("a refused create saved state")
	}
	if bus.Head() != head {
		t.Fatal("a refused create published an event")
	}
	if _, err := m.Get("web"); !errors.Is(err, ErrNotFound) {
		t.Fatal("a refused create took its name")
	}
	probe, err := net.Listen("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String())
	if err != nil {
		t.Fatalf("port %d not free after a refused create: %v", port, err)
	}
	probe.Close()
}

// A saved listener the policy now refuses comes back FAILED with the
// policy's error, and Rebind keeps refusing it.
func TestRestoreRefusedByPolicyComesBackFailed(t *testing.T) {
	st := &memStore{}
	m1 := newPersistentManager(t, st)
	l := create(t, m1, Spec{Host: "127.0.0.1"})
	m1.Shutdown(0)

	m2 := NewManager(events.NewBus(events.Options{}), nil, Options{Persister: st, Policy: Policy{Hosts: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}})
	t.Cleanup(func() { m2.Shutdown(0) })
	up, failed, err := m2.Restore(context.Background(), []json.RawMessage(st.saved()))
	if err != nil || up != 0 || failed != 1 {
		t.Fatalf("restore: %d up, %d failed, %v", up, failed, err)
	}
	got, err := m2.Get(l.ID())
	if err != nil {
		t.Fatal(err)
	}
	if in := got.Info(); in.State != StateFailed || !strings.HasPrefix(in.LastError, "spec.host: ") {
		t.Fatalf("restored %+v, want FAILED with the policy error", in)
	}
	if _, err := m2.Rebind(context.Background(), l.ID()); !errors.Is(err, ErrPermission) {
		t.Fatalf("rebind against the policy: %v", err)
	}
}
