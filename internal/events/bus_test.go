package events

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func publishN(b *Bus, listener string, n int) {
	for range n {
		b.Publish(Event{Listener: listener, Kind: KindConnectionOpened})
	}
}

// collect reads until it has n events.
func collect(t *testing.T, w *Watcher, n int) []uint64 {
	t.Helper()
	var seqs []uint64
	buf := make([]Event, 0, 64)
	for len(seqs) < n {
		batch, _, err := w.Next(ctx(t), buf)
		if err != nil {
			t.Fatalf("after %d events: %v", len(seqs), err)
		}
		for _, e := range batch {
			seqs = append(seqs, e.Seq)
		}
	}
	return seqs
}

func TestSequenceAndResume(t *testing.T) {
	b := NewBus(Options{History: chunkSize})
	publishN(b, "a", 10)
	after := uint64(4)
	w, head, err := b.Watch(Filter{}, &after)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if head != 10 {
		t.Fatalf("head %d", head)
	}
	publishN(b, "a", 5)
	got := collect(t, w, 11)
	for i, s := range got {
		if s != uint64(i+5) {
			t.Fatalf("seq[%d] = %d, want %d (no gap, no duplicate)", i, s, i+5)
		}
	}
}

func TestWatchFromNowAndFilter(t *testing.T) {
	b := NewBus(Options{})
	publishN(b, "a", 3)
	w, _, err := b.Watch(Filter{Listeners: []string{"b"}, Kinds: []Kind{KindConnectionClosed}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	publishN(b, "b", 3) // wrong kind
	b.Publish(Event{Listener: "a", Kind: KindConnectionClosed})
	b.Publish(Event{Listener: "b", Kind: KindConnectionClosed})
	got := collect(t, w, 1)
	if got[0] != 8 {
		t.Fatalf("got seq %d, want 8", got[0])
	}
}

func TestResumeOutOfRange(t *testing.T) {
	b := NewBus(Options{History: chunkSize})
	publishN(b, "a", chunkSize+10)
	for _, after := range []uint64{0, 5, chunkSize + 11} {
		_, _, err := b.Watch(Filter{}, &after)
		var re *RangeError
		if !errors.As(err, &re) || !errors.Is(err, ErrCompacted) {
			t.Fatalf("after %d: %v, want a RangeError", after, err)
		}
		if re.Oldest != 11 || re.Newest != chunkSize+10 {
			t.Fatalf("range %d-%d", re.Oldest, re.Newest)
		}
	}
	after := uint64(10) // oldest-1 is still a valid resume point
	w, _, err := b.Watch(Filter{}, &after)
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
}

// A watcher that does not read is cut loose with ErrSlow; the publisher
// never waits, and the watcher can resume from where it was.
func TestSlowWatcherIsCut(t *testing.T) {
	b := NewBus(Options{History: 4 * chunkSize, WatcherLag: 100})
	w, _, err := b.Watch(Filter{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	publishN(b, "a", 50)
	got := collect(t, w, 50)
	publishN(b, "a", 500) // never read: the watcher falls behind
	_, through, err := w.Next(ctx(t), nil)
	if !errors.Is(err, ErrSlow) {
		t.Fatalf("next: %v, want ErrSlow", err)
	}
	if through != got[len(got)-1] {
		t.Fatalf("cut at %d, last delivered %d", through, got[len(got)-1])
	}
	w2, _, err := b.Watch(Filter{}, &through)
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	if more := collect(t, w2, 500); more[0] != 51 || more[499] != 550 {
		t.Fatalf("resume got %d..%d", more[0], more[499])
	}
}

func TestCloseEndsWatchers(t *testing.T) {
	b := NewBus(Options{MaxWatchers: 1})
	w, _, err := b.Watch(Filter{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Watch(Filter{}, nil); !errors.Is(err, ErrTooManyWatchers) {
		t.Fatalf("second watcher: %v", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, _, err := w.Next(context.Background(), nil); !errors.Is(err, ErrClosed) {
			t.Errorf("next after close: %v", err)
		}
	}()
	b.Close()
	wg.Wait()
	w.Close()
	if _, _, err := b.Watch(Filter{}, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("watch after close: %v", err)
	}
}

// Concurrent publishers and watchers: every watcher sees every sequence
// exactly once, in order.
func TestConcurrentPublishersWatchers(t *testing.T) {
	const publishers, per, watchers = 4, 5000, 4
	b := NewBus(Options{})
	var ws []*Watcher
	for range watchers {
		w, _, err := b.Watch(Filter{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		ws = append(ws, w)
	}
	var wg sync.WaitGroup
	for range publishers {
		wg.Add(1)
		go func() { defer wg.Done(); publishN(b, "a", per) }()
	}
	results := make([][]uint64, watchers)
	for i, w := range ws {
		wg.Add(1)
		go func() { defer wg.Done(); results[i] = collect(t, w, publishers*per) }()
	}
	wg.Wait()
	for i, r := range results {
		for j, s := range r {
			if s != uint64(j+1) {
				t.Fatalf("watcher %d: seq[%d] = %d", i, j, s)
			}
		}
	}
}

func TestConnID(t *testing.T) {
	id := ConnID("ln-0123abcd", 42)
	l, n, ok := ParseConnID(id)
	if !ok || l != "ln-0123abcd" || n != 42 {
		t.Fatalf("parse %q: %q %d %v", id, l, n, ok)
	}
	for _, bad := range []string{"", "x", ".1", "ln-1.", "ln-1.0", "ln-1.x"} {
		if _, _, ok := ParseConnID(bad); ok {
			t.Errorf("parsed %q", bad)
		}
	}
}

func TestNextBatchLinger(t *testing.T) {
	b := NewBus(Options{})
	w, _, err := b.Watch(Filter{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	// Half full or more: no lingering, even with an hour's linger.
	publishN(b, "a", 200)
	got, through, err := w.NextBatch(ctx(t), make([]Event, 0, 256), time.Hour)
	if err != nil || len(got) != 200 || through != 200 {
		t.Fatalf("full batch: %d events through %d, %v", len(got), through, err)
	}
	// A batch just went out, so the stream is busy: a lone event waits out
	// the linger, then goes.
	publishN(b, "a", 1)
	got, through, err = w.NextBatch(ctx(t), make([]Event, 0, 256), time.Millisecond)
	if err != nil || len(got) != 1 || through != 201 {
		t.Fatalf("lone event: %d events through %d, %v", len(got), through, err)
	}
	// Events that arrive while it lingers join the batch.
	publishN(b, "a", 1)
	done := make(chan []Event)
	go func() {
		got, _, _ := w.NextBatch(ctx(t), make([]Event, 0, 4), time.Hour)
		done <- got
	}()
	publishN(b, "a", 1) // 2 of 4: half full, the batch goes
	if got := <-done; len(got) != 2 {
		t.Fatalf("lingering batch: %d events, want 2", len(got))
	}
}

// A quiet stream does not linger: its first event goes out at once, even
// with an hour's linger.
func TestNextBatchQuietStream(t *testing.T) {
	b := NewBus(Options{})
	w, _, err := b.Watch(Filter{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	c, cancel := context.WithCancel(context.Background()) // no deadline: it would end the linger
	defer cancel()
	done := make(chan []Event, 1)
	go func() {
		got, _, _ := w.NextBatch(c, make([]Event, 0, 256), time.Hour)
		done <- got
	}()
	publishN(b, "a", 1)
	select {
	case got := <-done:
		if len(got) != 1 || got[0].Seq != 1 {
			t.Fatalf("first event of a quiet stream: %+v", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a quiet stream's first event waited for the linger")
	}
}

// A history too large to allocate is capped, not a panic.
func TestHugeHistoryIsCapped(t *testing.T) {
	b := NewBus(Options{History: math.MaxInt})
	defer b.Close()
	if got := len(b.chunks) * chunkSize; got != MaxHistory {
		t.Fatalf("history of %d events, want it capped at %d", got, MaxHistory)
	}
}

// The history holds at most HistoryData bytes of connection data: past it,
// the oldest data events lose their bytes and keep everything else, and
// events copied out before keep what they had.
func TestHistoryDataIsBounded(t *testing.T) {
	b := NewBus(Options{History: chunkSize, HistoryData: 1000})
	defer b.Close()
	w, _, err := b.Watch(Filter{DataMax: 300}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	b.Publish(Event{Listener: "a", Kind: KindConnectionData, BytesIn: 300, Detail: &Detail{Data: make([]byte, 300)}})
	first, _, err := w.Next(ctx(t), nil) // copied out while it has its bytes
	if err != nil || len(first) != 1 {
		t.Fatalf("first data event: %v, %v", first, err)
	}
	for range 9 { // each read is a copy of its own
		b.Publish(Event{Listener: "a", Kind: KindConnectionData, BytesIn: 300, Detail: &Detail{Data: make([]byte, 300)}})
	}
	if len(first[0].Detail.Data) != 300 {
		t.Fatalf("an event already read lost its bytes: %d", len(first[0].Detail.Data))
	}
	after := uint64(0)
	r, _, err := b.Watch(Filter{DataMax: 300}, &after)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var held []int
	buf := make([]Event, 0, 16)
	for len(held) < 10 {
		batch, _, err := r.Next(ctx(t), buf)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range batch {
			if e.BytesIn != 300 {
				t.Fatalf("event %d lost its length: %+v", e.Seq, e)
			}
			held = append(held, len(e.Detail.Data))
		}
	}
	want := []int{0, 0, 0, 0, 0, 0, 0, 300, 300, 300} // 1000 bytes hold the newest three
	for i := range want {
		if held[i] != want[i] {
			t.Fatalf("bytes held per event %v, want %v", held, want)
		}
	}
	if b.data.bytes > 1000 {
		t.Fatalf("%d bytes of data accounted, budget 1000", b.data.bytes)
	}
}

// An echo's out event shares its in event's bytes: the pair counts once
// against HistoryData, so echo data gets the whole budget.
func TestHistoryDataCountsSharedBytesOnce(t *testing.T) {
	b := NewBus(Options{History: chunkSize, HistoryData: 1000})
	defer b.Close()
	for range 3 {
		read := make([]byte, 300)
		b.Publish(Event{Listener: "a", Kind: KindConnectionData, Detail: &Detail{Data: read}})
		b.Publish(Event{Listener: "a", Kind: KindConnectionData, Detail: &Detail{Data: read[:200], Outbound: true}})
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.data.bytes != 900 {
		t.Fatalf("%d bytes accounted for three shared pairs of 300, want 900", b.data.bytes)
	}
	for seq := uint64(1); seq <= 6; seq++ {
		if e := b.slot(seq); len(e.Detail.Data) == 0 {
			t.Fatalf("event %d lost its bytes inside the budget", seq)
		}
	}
}

// When the oldest pair goes over the budget, both its events lose the
// bytes: the out event kept none of its own to count.
func TestHistoryDataDropsSharedBytesTogether(t *testing.T) {
	b := NewBus(Options{History: chunkSize, HistoryData: 1000})
	defer b.Close()
	for range 4 { // 1200 bytes in four pairs
		read := make([]byte, 300)
		b.Publish(Event{Listener: "a", Kind: KindConnectionData, Detail: &Detail{Data: read}})
		b.Publish(Event{Listener: "a", Kind: KindConnectionData, Detail: &Detail{Data: read, Outbound: true}})
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var held []int
	for seq := uint64(1); seq <= 8; seq++ {
		held = append(held, len(b.slot(seq).Detail.Data))
	}
	if want := []int{0, 0, 300, 300, 300, 300, 300, 300}; !slices.Equal(held, want) {
		t.Fatalf("bytes held per event %v, want %v (the first pair dropped together)", held, want)
	}
	if b.data.bytes != 900 {
		t.Fatalf("%d bytes accounted, want 900", b.data.bytes)
	}
}

// Data that has left the ring with its events no longer counts.
func TestHistoryDataLeavesWithItsEvents(t *testing.T) {
	b := NewBus(Options{History: chunkSize, HistoryData: 1000})
	defer b.Close()
	payload := make([]byte, 300)
	for range 3 {
		b.Publish(Event{Listener: "a", Kind: KindConnectionData, Detail: &Detail{Data: payload}})
	}
	publishN(b, "a", chunkSize) // the three data events leave the ring
	b.Publish(Event{Listener: "a", Kind: KindConnectionData, Detail: &Detail{Data: payload}})
	b.mu.Lock()
	bytes, n := b.data.bytes, b.data.len()
	b.mu.Unlock()
	if bytes != 300 || n != 1 {
		t.Fatalf("%d bytes in %d events accounted, want the newest event's 300", bytes, n)
	}
}

// A watcher cut for falling behind leaves the list Publish wakes at once,
// before its reader notices, and keeps no data recorded; it holds its slot
// until its reader closes it, so streams whose clients stopped reading stay
// bounded by MaxWatchers.
func TestSlowWatcherLeavesAtOnce(t *testing.T) {
	b := NewBus(Options{History: 4 * chunkSize, WatcherLag: 100, MaxWatchers: 1})
	defer b.Close()
	w, _, err := b.Watch(Filter{DataMax: 64}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if b.DataCap() == 0 {
		t.Fatal("a data watcher does not turn data recording on")
	}
	publishN(b, "a", 101) // never read: cut
	if n := len(*b.watchers.Load()); n != 0 {
		t.Fatalf("%d watchers woken after the cut, want 0", n)
	}
	if c := b.DataCap(); c != 0 {
		t.Fatalf("data cap %d after the only data watcher was cut, want 0", c)
	}
	if n := b.Watchers(); n != 1 {
		t.Fatalf("%d watchers hold a slot after the cut, want 1 until it is closed", n)
	}
	_, _, err = b.Watch(Filter{}, nil)
	if !errors.Is(err, ErrTooManyWatchers) || !strings.Contains(err.Error(), "1 of them cut") {
		t.Fatalf("watch while the cut watcher is open: %v, want ErrTooManyWatchers saying one is cut", err)
	}
	w.Close()
	w.Close() // gives the slot back once
	if n := b.Watchers(); n != 0 {
		t.Fatalf("%d watchers hold a slot after Close, want 0", n)
	}
	w2, _, err := b.Watch(Filter{}, nil) // the slot is free
	if err != nil {
		t.Fatalf("watch after the cut watcher closed: %v", err)
	}
	w2.Close()
}

// A batch carries at most maxBatchData bytes of connection data, unless a
// single event is larger; the events past it come in the next batches, in
// order, and none is lost.
func TestBatchDataBudget(t *testing.T) {
	b := NewBus(Options{History: 4 * chunkSize})
	defer b.Close()
	w, _, err := b.Watch(Filter{DataMax: MaxDataBytes}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	sizes := []int{MaxDataBytes, 10, 40 << 10, 30 << 10, 1, MaxDataBytes, MaxDataBytes}
	for _, n := range sizes {
		b.Publish(Event{Kind: KindConnectionData, Listener: "l", Detail: &Detail{Data: make([]byte, n)}})
	}
	b.Publish(Event{Kind: KindConnectionClosed, Listener: "l"})
	var got [][]int // data sizes per batch
	for seen := 0; seen < len(sizes)+1; {
		batch, _, err := w.Next(ctx(t), make([]Event, 0, 256))
		if err != nil {
			t.Fatal(err)
		}
		var ns []int
		for _, e := range batch {
			if e.Detail != nil {
				ns = append(ns, len(e.Detail.Data))
			} else {
				ns = append(ns, -1)
			}
		}
		got = append(got, ns)
		seen += len(batch)
	}
	want := [][]int{{MaxDataBytes}, {10, 40 << 10}, {30 << 10, 1}, {MaxDataBytes}, {MaxDataBytes, -1}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("batches of data sizes %v, want %v", got, want)
	}
}

// The history holds exactly History events, not the ring's capacity (a
// multiple of the chunk size): a resume before them is out of range.
func TestHistoryIsExact(t *testing.T) {
	b := NewBus(Options{History: 10})
	defer b.Close()
	publishN(b, "a", 25) // holds 16-25
	after := uint64(15)
	w, _, err := b.Watch(Filter{}, &after)
	if err != nil {
		t.Fatalf("resume after 15 with 16-25 held: %v", err)
	}
	batch, _, err := w.Next(ctx(t), nil)
	if err != nil || len(batch) != 10 || batch[0].Seq != 16 {
		t.Fatalf("replay: %d events from %v, %v; want 10 from 16", len(batch), batch, err)
	}
	w.Close()
	after = 14
	var re *RangeError
	if _, _, err := b.Watch(Filter{}, &after); !errors.As(err, &re) || re.Oldest != 16 || re.Newest != 25 {
		t.Fatalf("resume after 14: %v, want a RangeError holding 16 to 25", err)
	}
}

// With a history smaller than the watcher lag, a watcher is cut while the
// events after its last one are still held, so it can resume.
func TestSmallHistoryCutCanResume(t *testing.T) {
	b := NewBus(Options{History: 1000}) // the default lag is 65,536
	defer b.Close()
	w, _, err := b.Watch(Filter{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i := 0; ; i++ {
		if i == 2000 {
			t.Fatal("not cut after 2,000 events unread")
		}
		b.Publish(Event{Listener: "a"})
		select {
		case <-w.done:
		default:
			continue
		}
		break
	}
	after := uint64(0) // nothing was read
	r, _, err := b.Watch(Filter{}, &after)
	if err != nil {
		t.Fatalf("resume after the cut at head %d: %v", b.Head(), err)
	}
	r.Close()
}

// After Close, a new watch is told the bus closed, even with every slot
// held.
func TestWatchAfterCloseIsClosed(t *testing.T) {
	b := NewBus(Options{MaxWatchers: 1})
	w, _, err := b.Watch(Filter{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	b.Close()
	if _, _, err := b.Watch(Filter{}, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("watch after Close: %v, want ErrClosed", err)
	}
}
