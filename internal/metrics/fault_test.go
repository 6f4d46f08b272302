package metrics

import (
	"net"
	"testing"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
)

// A listener's faults are counted: in force, applied, and the rejects a
// refuse fault makes, under the reason fault.
func TestCollectorCountsFaults(t *testing.T) {
	r := newRig(t)
	l := r.create("", listener.Spec{Faults: []listener.Fault{{Name: "no", Kind: events.FaultRefuse, Probability: 1}}})
	id := l.ID()
	lbl := map[string]string{"listener": id}
	r.expect("listenerd_listener_faults", lbl, 1)
	r.expect("listenerd_listener_faults_applied_total", lbl, 0)
	c, err := dialRaw(r.addr(l))
	if err == nil {
		c.Close()
	}
	r.waitEvent(id, events.KindConnectionRejected, new(uint64(0)))
	r.expect("listenerd_listener_faults_applied_total", lbl, 1)
	r.expect("listenerd_listener_rejected_connections_total", map[string]string{"listener": id, "reason": "fault"}, 1)
	r.expect("listenerd_listener_fault_closes_total", lbl, 0)
}

// dialRaw connects without failing the test: a refused connection's RST
// may beat connect(2)'s return.
func dialRaw(addr string) (interface{ Close() error }, error) { return net.Dial("tcp", addr) }
