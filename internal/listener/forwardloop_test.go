package listener

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/testkit"
)

// A forward whose upstream leads back into itself through this daemon's
// forward listeners is refused at its dial, before the connect, with the
// loop in its closed event. Unchecked, each connection dialled the next
// until the daemon ran out of descriptors. A chain of forwards that ends
// at an echo is no loop.
func TestForwardLoopRefused(t *testing.T) {
	m := newManager(t)
	freePort := func() uint16 { // a port that was free a moment ago
		l := create(t, m, Spec{})
		if _, err := m.Close(l.ID(), 0, true); err != nil {
			t.Fatal(err)
		}
		return localPortOf(l)
	}
	// at creates a forward on a port that was free a moment ago, whose
	// upstream names that port; another process may take the port in
	// between, so it tries again with another (a bounded number of times).
	at := func(host string, upstream func(port uint16) string) (*Listener, error) {
		var err error
		for range 50 {
			p := freePort()
			var l *Listener
			l, err = m.Create(context.Background(), "", Spec{Host: host, Port: p, Handler: ForwardTo(upstream(p), 0)})
			if !errors.Is(err, ErrAddressInUse) {
				return l, err
			}
		}
		return nil, err
	}
	mustAt := func(host string, upstream func(port uint16) string) *Listener {
		t.Helper()
		l, err := at(host, upstream)
		if err != nil {
			t.Fatalf("create: %v", err)
		}
		return l
	}
	forward := func(host string, port uint16, upstream string) *Listener {
		return create(t, m, Spec{Host: host, Port: port, Handler: ForwardTo(upstream, 0)})
	}
	// the wildcard serves loopback
	self := mustAt("0.0.0.0", func(p uint16) string { return fmt.Sprintf("127.0.0.1:%d", p) })
	var a *Listener
	b := mustAt("", func(q uint16) string {
		if a != nil {
			if _, err := m.Close(a.ID(), 0, true); err != nil {
				t.Fatal(err)
			}
		}
		a = forward("", 0, fmt.Sprintf("127.0.0.1:%d", q))
		return a.Info().Bound
	})
	// a dial to 0.0.0.0 reaches 127.0.0.1
	unspec := mustAt("", func(r uint16) string { return fmt.Sprintf("0.0.0.0:%d", r) })
	type loop struct {
		l    *Listener
		path string
	}
	loops := []loop{
		{self, self.ID() + " -> " + self.ID()},
		{a, a.ID() + " -> " + b.ID() + " -> " + a.ID()},
		{unspec, unspec.ID() + " -> " + unspec.ID()},
	}
	accepted := map[*Listener]uint64{self: 1, a: 1, b: 0, unspec: 1}
	if v6, err := at("::1", func(r6 uint16) string { return fmt.Sprintf("[::]:%d", r6) }); err == nil {
		loops = append(loops, loop{v6, v6.ID() + " -> " + v6.ID()}) // a dial to :: reaches ::1
		accepted[v6] = 1
	} else {
		t.Logf("no IPv6 loopback here: %v", err)
	}
	for _, tc := range loops {
		w := newWatch(t, m, tc.l.ID())
		c := testkit.Dial(t, tc.l.Info().Bound)
		if _, err := io.ReadAll(c); err != nil {
			t.Logf("client read: %v", err)
		}
		evs := w.until(countAtLeast(events.KindConnectionClosed, 1))
		e := evs[len(evs)-1]
		if e.Close != events.CloseUpstreamFailed || e.Detail == nil || !strings.Contains(e.Detail.Error, "forward loop") || !strings.Contains(e.Detail.Error, tc.path) {
			t.Fatalf("closed event %+v %+v; want upstream_failed naming the loop %s", e, e.Detail, tc.path)
		}
	}
	// Nothing went round: only the test's own connections were accepted.
	for l, want := range accepted {
		if got := l.Info().Accepted; got != want {
			t.Errorf("listener %s accepted %d connections, want %d", l.ID(), got, want)
		}
	}

	echo := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}})
	mid := forward("", 0, echo.Info().Bound)
	front := forward("", 0, mid.Info().Bound)
	c := testkit.Dial(t, front.Info().Bound)
	go func() {
		_, _ = c.Write([]byte("through two forwards"))
		_ = c.CloseWrite()
	}()
	if got, err := io.ReadAll(c); err != nil || string(got) != "through two forwards" {
		t.Fatalf("read %q, %v through a chain that ends at an echo", got, err)
	}
}

// A hop's upstream resolves as its dial would: literals as they are, names
// through the resolver, service names to their port.
func TestResolveUpstream(t *testing.T) {
	for up, want := range map[string]string{
		"127.0.0.1:80":   "127.0.0.1:80",
		"[::1]:http":     "[::1]:80",
		"localhost:8080": "127.0.0.1:8080|[::1]:8080",
	} {
		got, err := resolveUpstream(context.Background(), up)
		if err != nil || !strings.Contains("|"+want+"|", "|"+got.String()+"|") {
			t.Errorf("resolveUpstream(%q) = %v, %v; want %s", up, got, err, want)
		}
	}
	if _, err := resolveUpstream(context.Background(), "no-such-host.invalid:80"); err == nil {
		t.Error("resolveUpstream of a name that does not resolve: no error")
	}
}

// A dial reaches a listener bound to its address, to its family's wildcard,
// or, dialling 0.0.0.0 or ::, to its family's loopback address.
func TestServing(t *testing.T) {
	m := newManager(t)
	v4 := create(t, m, Spec{})
	port := localPortOf(v4)
	for target, want := range map[string]*Listener{
		fmt.Sprintf("127.0.0.1:%d", port):          v4,
		fmt.Sprintf("[::ffff:127.0.0.1]:%d", port): v4,
		fmt.Sprintf("0.0.0.0:%d", port):            v4,
		fmt.Sprintf("[::]:%d", port):               nil, // ::1: not an IPv4 listener's
		fmt.Sprintf("127.0.0.2:%d", port):          nil,
		fmt.Sprintf("127.0.0.1:%d", port+1):        nil,
	} {
		if got := m.serving(netip.MustParseAddrPort(target)); got != want {
			t.Errorf("serving(%s) = %v, want %v", target, got, want)
		}
	}
	wild := create(t, m, Spec{Host: "0.0.0.0"})
	wport := localPortOf(wild)
	for _, target := range []string{fmt.Sprintf("127.0.0.2:%d", wport), fmt.Sprintf("0.0.0.0:%d", wport)} {
		if got := m.serving(netip.MustParseAddrPort(target)); got != wild {
			t.Errorf("serving(%s) = %v, want the wildcard listener", target, got)
		}
	}
	if _, err := m.Close(v4.ID(), 0, true); err != nil {
		t.Fatal(err)
	}
	if got := m.serving(netip.MustParseAddrPort(fmt.Sprintf("127.0.0.1:%d", port))); got != nil {
		t.Errorf("a closed listener still serves: %v", got)
	}
}

// The API and metrics endpoints listen as listeners do: an IPv4 address,
// 0.0.0.0 included, takes IPv4 only.
func TestListenNetwork(t *testing.T) {
	for addr, want := range map[string]string{
		"0.0.0.0:1":            "tcp4",
		"127.0.0.1:1":          "tcp4",
		"[::ffff:127.0.0.1]:1": "tcp4",
		"[::]:1":               "tcp",
		"[::1]:1":              "tcp6",
		"localhost:1":          "tcp",
		":1":                   "tcp",
		"nonsense":             "tcp",
	} {
		if got := ListenNetwork(addr); got != want {
			t.Errorf("ListenNetwork(%q) = %s, want %s", addr, got, want)
		}
	}
}
