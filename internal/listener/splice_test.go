package listener

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/testkit"
)

// echoBulk writes size pseudo-random bytes to an echo listener while
// reading the echo, half-closes, reads to EOF, and checks that every byte
// came back in order.
func echoBulk(t *testing.T, addr string, size int) {
	t.Helper()
	data := make([]byte, size)
	r := rand.New(rand.NewChaCha8([32]byte{7}))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	c := testkit.Dial(t, addr)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read the echo: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if len(got) != size || sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("echo of %d bytes: got %d bytes, equal %v", size, len(got), bytes.Equal(got, data))
	}
}

// A bulk transfer is echoed exactly and counted both ways; on Linux it is
// spliced in the kernel once a read fills the buffer.
func TestEchoBulk(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}})
	w := newWatch(t, m, l.ID())
	const size = 16 << 20
	before := splicedBytes.Load()
	echoBulk(t, l.Info().Bound, size)
	evs := w.until(countAtLeast(events.KindConnectionClosed, 1))
	closed := evs[len(evs)-1]
	if closed.Kind != events.KindConnectionClosed || closed.BytesIn != size || closed.BytesOut != size {
		t.Fatalf("closed event %+v: want %d bytes each way", closed, size)
	}
	if info := l.Info(); info.BytesIn != size || info.BytesOut != size {
		t.Fatalf("listener counters in %d out %d, want %d", info.BytesIn, info.BytesOut, size)
	}
	if spliced := splicedBytes.Load() - before; runtime.GOOS == "linux" && spliced == 0 {
		t.Fatal("nothing was spliced")
	}
}

// While a watcher asks for connection data, bytes go through the buffer
// (nothing is spliced), and the data events account for every byte.
func TestEchoBulkWithDataWatcher(t *testing.T) {
	m := newManager(t)
	l := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}})
	after := uint64(0)
	dw, _, err := m.Bus().Watch(events.Filter{Listeners: []string{l.ID()}, DataMax: 16}, &after)
	if err != nil {
		t.Fatal(err)
	}
	defer dw.Close()
	const size = 4 << 20
	before := splicedBytes.Load()
	echoBulk(t, l.Info().Bound, size)
	if spliced := splicedBytes.Load() - before; spliced != 0 {
		t.Fatalf("%d bytes spliced while a watcher wanted the data", spliced)
	}
	var in, out uint64
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	for closed := false; !closed; {
		batch, _, err := dw.Next(ctx, make([]events.Event, 0, 256))
		if err != nil {
			t.Fatalf("data events (in %d, out %d): %v", in, out, err)
		}
		for _, e := range batch {
			switch {
			case e.Kind == events.KindConnectionData && e.Detail.Outbound:
				out += e.BytesIn
			case e.Kind == events.KindConnectionData:
				in += e.BytesIn
			case e.Kind == events.KindConnectionClosed:
				closed = true
			}
		}
	}
	if in != size || out != size {
		t.Fatalf("data events carry %d in and %d out, want %d each", in, out, size)
	}
}

// A bulk transfer through a forward listener comes back exact, is counted
// both ways and, on Linux, is spliced.
func TestForwardBulk(t *testing.T) {
	m := newManager(t)
	up := create(t, m, Spec{Handler: HandlerSpec{Kind: "echo"}})
	fw := create(t, m, Spec{Handler: ForwardTo(up.Info().Bound, 0)})
	w := newWatch(t, m, fw.ID())
	const size = 16 << 20
	before := splicedBytes.Load()
	echoBulk(t, fw.Info().Bound, size)
	evs := w.until(countAtLeast(events.KindConnectionClosed, 1))
	if e := evs[len(evs)-1]; e.BytesIn != size || e.BytesOut != size || e.Close != events.ClosePeerClosed {
		t.Fatalf("closed event %+v: want %d bytes each way, peer closed", e, size)
	}
	// Each byte crosses the forwarder twice, and the upstream echo once.
	if spliced := splicedBytes.Load() - before; runtime.GOOS == "linux" && spliced < 2*size {
		t.Fatalf("%d bytes spliced, want at least the %d forwarded", spliced, 2*size)
	}
}
