package listener

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/listenerd/listenerd/internal/events"
)

// A forward whose upstream leads back into itself through this daemon's
// forward listeners is refused at its dial, before the connect, with the
// loop in its closed event. Unchecked, each connection dialled the next
// until the daemon ran out of descriptors. A chain of forwards that ends
// at an echo is no loop.
func TestForwardLoopRefused(t *testing.T) {
	m := newManager(t)
	freePort := func() uint16 { // a port that was free a moment ago
		l := create(t, m, Spec{Limits: unlimited()})
		if _, err := m.Close(l.ID(), 0, true); err != nil {
			t.Fatal(err)
		}
		return localPortOf(l)
	}
	forward := func(host string, port uint16, upstream string) *Listener {
		return create(t, m, Spec{Host: host, Port: port, Limits: unlimited(), Handler: Handler{Kind: HandlerForward, Upstream: upstream}})
	}
	p := freePort()
	self := forward("0.0.0.0", p, fmt.Sprintf("127.0.0.1:%d", p)) // the wildcard serves loopback
	q := freePort()
	a := forward("", 0, fmt.Sprintf("127.0.0.1:%d", q))
	b := forward("", q, a.Info().Bound)
	for _, tc := range []struct {
		l    *Listener
		path string
	}{
		{self, self.ID() + " -> " + self.ID()},
		{a, a.ID() + " -> " + b.ID() + " -> " + a.ID()},
	} {
		w := newWatch(t, m, tc.l.ID())
		c := dial(t, tc.l.Info().Bound)
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
	for l, want := range map[*Listener]uint64{self: 1, a: 1, b: 0} {
		if got := l.Info().Accepted; got != want {
			t.Errorf("listener %s accepted %d connections, want %d", l.ID(), got, want)
		}
	}

	echo := create(t, m, Spec{Limits: unlimited(), Handler: Handler{Kind: HandlerEcho}})
	mid := forward("", 0, echo.Info().Bound)
	front := forward("", 0, mid.Info().Bound)
	c := dial(t, front.Info().Bound)
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
	if got := netip.MustParseAddrPort("[::ffff:127.0.0.1]:1").Addr().Unmap(); !isLocal(got) {
		t.Errorf("isLocal(%v) = false", got)
	}
}
