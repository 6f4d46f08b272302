package events

import (
	"errors"
	"testing"
)

// dataEvent is a connection data event carrying n bytes.
func dataEvent(n int) Event {
	return Event{Listener: "a", Kind: KindConnectionData, BytesIn: uint64(n), Detail: &Detail{Data: make([]byte, n)}}
}

// heldBytes recounts what the history holds, event by event.
func heldBytes(b *Bus) (events uint64, bytes int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for seq := b.tail; seq <= b.head; seq++ {
		e := b.slot(seq)
		bytes += metaBytes(e)
		if e.Detail != nil {
			bytes += int64(len(e.Detail.Data))
		}
		events++
	}
	return events, bytes
}

// The history holds at most HistoryBytes, every event counted by its size
// and data by its length, whatever the event count allows: past it the
// oldest events go, a resume before them is OUT_OF_RANGE naming the
// oldest held, and the chunks they filled are let go.
func TestHistoryBytesIsBounded(t *testing.T) {
	const budget = 256 << 10
	b := NewBus(Options{History: 1 << 20, HistoryBytes: budget})
	defer b.Close()
	for i := range 20 * chunkSize {
		switch i % 3 {
		case 0:
			b.Publish(dataEvent(100 + i%900))
		case 1:
			b.Publish(Event{Listener: "a", Kind: KindAcceptError, Detail: &Detail{Error: "accept: too many open files"}})
		default:
			b.Publish(Event{Listener: "a", Kind: KindConnectionOpened})
		}
		if st := b.Stats(); st.HeldBytes > budget {
			t.Fatalf("after %d events: %d bytes held, budget %d", i+1, st.HeldBytes, budget)
		}
	}
	st := b.Stats()
	events, bytes := heldBytes(b)
	if st.Held != events || st.HeldBytes != bytes || st.Budget != budget {
		t.Fatalf("stats %+v; recounted %d events, %d bytes", st, events, bytes)
	}
	if bytes < budget/2 || events >= st.Head {
		t.Fatalf("%d events, %d bytes held of %d published: the budget should be nearly full and the oldest gone", events, bytes, st.Head)
	}
	oldest := st.Head - st.Held + 1
	var re *RangeError
	after := uint64(0)
	if _, _, err := b.Watch(Filter{}, &after); !errors.As(err, &re) || re.Oldest != oldest {
		t.Fatalf("resume from the start: %v; want a RangeError naming %d", err, oldest)
	}
	after = oldest - 1
	w, _, err := b.Watch(Filter{DataMax: MaxDataBytes}, &after)
	if err != nil {
		t.Fatalf("resume after %d: %v", after, err)
	}
	defer w.Close()
	if got := collect(t, w, int(st.Held)); got[0] != oldest {
		t.Fatalf("replay from %d, want %d", got[0], oldest)
	}
	b.mu.Lock()
	chunks := 0
	for _, c := range b.chunks {
		if c != nil {
			chunks++
		}
	}
	b.mu.Unlock()
	if want := int(events)/chunkSize + 2; chunks > want {
		t.Fatalf("%d chunks kept for %d events held, want at most %d", chunks, events, want)
	}
}

// Under the byte budget, as under the event count, a watcher that stops
// reading is cut while the events after its last one are still held, so
// it can resume.
func TestHistoryBytesCutCanResume(t *testing.T) {
	b := NewBus(Options{HistoryBytes: 64 << 10}) // the default lag is 65,536 events
	defer b.Close()
	w, _, err := b.Watch(Filter{DataMax: MaxDataBytes}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i := 0; ; i++ {
		if i == 1000 {
			t.Fatal("not cut after 1,000 data events of 1 KiB unread")
		}
		b.Publish(dataEvent(1024))
		select {
		case <-w.done:
		default:
			continue
		}
		break
	}
	if _, _, err := w.Next(ctx(t), nil); !errors.Is(err, ErrSlow) {
		t.Fatalf("next: %v, want ErrSlow", err)
	}
	after := uint64(0) // nothing was read
	r, _, err := b.Watch(Filter{}, &after)
	if err != nil {
		t.Fatalf("resume after the cut at head %d: %v", b.Head(), err)
	}
	r.Close()
}
