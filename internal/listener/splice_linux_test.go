package listener

import (
	"io"
	"os"
	"strings"
	"testing"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/testkit"
)

// Pipes are capped, pooled or in use: past maxPipes none is made, and one
// given back can be taken again.
func TestPipeCap(t *testing.T) {
	var held []*pipe
	defer func() {
		for _, p := range held {
			putPipe(p, false)
		}
	}()
	for len(held) < maxPipes {
		p, err := getPipe(nil)
		if err != nil {
			t.Fatalf("pipe %d of %d: %v", len(held)+1, maxPipes, err)
		}
		held = append(held, p)
	}
	if p, err := getPipe(nil); err == nil {
		held = append(held, p)
		t.Fatalf("got pipe %d, over the cap of %d", len(held), maxPipes)
	}
	putPipe(held[0], true) // into the pool, still counted
	held = held[1:]
	p, err := getPipe(nil)
	if err != nil {
		t.Fatalf("a pooled pipe: %v", err)
	}
	held = append(held, p)
	if p.size <= 0 {
		t.Fatalf("pipe size %d", p.size)
	}
}

// openPipes counts this process's pipe descriptors.
func openPipes(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(target, "pipe:") {
			n++
		}
	}
	return n
}

// Idle forwarded connections hold no pipe: after data has gone both ways
// on each, the pipes open are at most the pool's (io.Copy would hold two
// per connection, four descriptors).
func TestForwardIdleHoldsNoPipe(t *testing.T) {
	m := newManager(t)
	up := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}})
	fw := create(t, m, Spec{Handler: ForwardTo(up.Info().Bound, 0)})
	w := newWatch(t, m, fw.ID())
	before := openPipes(t)
	const conns = 40
	for range conns {
		c := testkit.Dial(t, fw.Info().Bound)
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4)
		if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
			t.Fatalf("echo through the forwarder: %q, %v", got, err)
		}
	}
	w.until(countAtLeast(events.KindConnectionOpened, conns))
	if held := openPipes(t) - before; held > pipePoolMax {
		t.Fatalf("%d pipes open with %d idle forwarded connections; at most the pool's %d wanted", held, conns, pipePoolMax)
	}
}

// With every pipe taken, bulk echo and forwarding go through buffers, and
// every byte still comes back in order.
func TestBulkWithoutPipes(t *testing.T) {
	var held []*pipe
	defer func() {
		for _, p := range held {
			putPipe(p, false)
		}
	}()
	for {
		p, err := getPipe(nil)
		if err != nil {
			break
		}
		held = append(held, p)
	}
	if len(held) != maxPipes {
		t.Fatalf("took %d pipes, want all %d", len(held), maxPipes)
	}
	m := newManager(t)
	echo := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}})
	fw := create(t, m, Spec{Handler: ForwardTo(echo.Info().Bound, 0)})
	before := splicedBytes.Load()
	echoBulk(t, echo.Info().Bound, 4<<20)
	echoBulk(t, fw.Info().Bound, 4<<20)
	if spliced := splicedBytes.Load() - before; spliced != 0 {
		t.Fatalf("%d bytes spliced with no pipe free", spliced)
	}
}
