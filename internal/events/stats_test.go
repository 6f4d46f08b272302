package events

import (
	"errors"
	"testing"
)

// Stats count the watchers cut for falling behind and the events they had
// not been sent; a watcher ended otherwise is not counted.
func TestStatsCountSlowCuts(t *testing.T) {
	b := NewBus(Options{History: 4 * chunkSize, WatcherLag: 100})
	slow, _, err := b.Watch(Filter{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	closed, _, err := b.Watch(Filter{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st := b.Stats(); st.Watchers != 2 || st.SlowCuts != 0 || st.Head != 0 {
		t.Fatalf("before: %+v", st)
	}
	closed.Close() // ended by its reader: not a cut
	publishN(b, "a", 50)
	collect(t, slow, 50)
	publishN(b, "a", 500) // never read: cut when 101 behind (seq 151, read through 50)
	if _, _, err := slow.Next(ctx(t), nil); !errors.Is(err, ErrSlow) {
		t.Fatalf("next: %v, want ErrSlow", err)
	}
	slow.Close()
	if st := b.Stats(); st != (Stats{Head: 550, Watchers: 0, SlowCuts: 1, Unsent: 101, Held: 550, HeldBytes: 550 * eventSize, Budget: DefaultHistoryBytes}) {
		t.Fatalf("after: %+v", st)
	}
}
