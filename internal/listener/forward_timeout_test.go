package listener

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/testkit"
)

// A dial that runs out of time is the upstream's failure, with the dial's
// error, not an idle timeout: the listener has none.
func TestForwardConnectTimeoutIsUpstreamFailed(t *testing.T) {
	m := newManager(t)
	fw := create(t, m, Spec{Handler: ForwardTo(testkit.BlackHole(t), 50*time.Millisecond)})
	w := newWatch(t, m, fw.ID())
	c := testkit.Dial(t, fw.Info().Bound)
	evs := w.until(countAtLeast(events.KindConnectionClosed, 1))
	e := evs[len(evs)-1]
	if e.Close != events.CloseUpstreamFailed || e.Detail == nil ||
		!strings.Contains(e.Detail.Error, "connect timeout (50ms)") || !strings.Contains(e.Detail.Error, "dial tcp") {
		t.Fatalf("closed event %+v %+v; want upstream_failed with the dial's error", e, e.Detail)
	}
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("read %d bytes from a connection whose upstream never answered", n)
	}
}

// connect_timeout is at most MaxConnectTimeout.
func TestForwardConnectTimeoutMaximum(t *testing.T) {
	m := newManager(t)
	create(t, m, Spec{Handler: ForwardTo("127.0.0.1:9", MaxConnectTimeout)})
	_, err := m.Create(context.Background(), "", Spec{Handler: ForwardTo("127.0.0.1:9", MaxConnectTimeout+time.Nanosecond)})
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "spec.handler.forward.connect_timeout" || !strings.Contains(fe.Msg, "maximum, 5m0s") {
		t.Fatalf("create with a connect timeout past the maximum: %v", err)
	}
}
