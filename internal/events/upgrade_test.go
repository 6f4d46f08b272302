package events

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

// An upgrade's two buses: the old one's history, then what it records
// while it drains, go on in the new one with no gap, no duplicate and the
// same boot id.
func TestUpgradeHistoryGoesOn(t *testing.T) {
	old := NewBus(Options{History: chunkSize})
	publishN(old, "a", 10)
	snap, head := old.Snapshot()
	if len(snap) != 10 || head != 10 || snap[0].Seq != 1 {
		t.Fatalf("snapshot %d events, head %d", len(snap), head)
	}
	publishN(old, "a", 3) // while the snapshot travels
	delta, head2, div, err := old.Divert(head)
	if err != nil {
		t.Fatal(err)
	}
	if len(delta) != 3 || head2 != 13 || delta[0].Seq != 11 {
		t.Fatalf("delta %d events, head %d", len(delta), head2)
	}
	if _, _, _, err := old.Divert(head2); err == nil {
		t.Fatal("a second Divert succeeded")
	}
	if seq := old.Publish(Event{Listener: "a", Kind: KindConnectionClosed}); seq != 13 {
		t.Fatalf("a diverted event moved the old head to %d", seq)
	}
	if old.Head() != 13 {
		t.Fatalf("old head %d", old.Head())
	}

	nb := NewBus(Options{History: chunkSize})
	if err := nb.Resume(old.BootID(), snap, head); err != nil {
		t.Fatal(err)
	}
	if err := nb.Resume(old.BootID(), delta, head2); err != nil {
		t.Fatal(err)
	}
	if nb.BootID() != old.BootID() || nb.Head() != 13 {
		t.Fatalf("new bus boot %s head %d", nb.BootID(), nb.Head())
	}
	after := uint64(8) // a watcher of the old bus, resuming
	w, _, err := nb.Watch(Filter{}, &after)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	nb.Publish(Event{Listener: "a", Kind: KindConnectionOpened}) // the new process's own: 14
	evs, ended := div.Take()
	if len(evs) != 1 || ended || evs[0].Time == 0 {
		t.Fatalf("diverted %v ended %v", evs, ended)
	}
	at := evs[0].Time
	if seq := nb.Import(evs[0]); seq != 15 {
		t.Fatalf("imported as %d", seq)
	}
	div.End()
	old.Publish(Event{Listener: "a"}) // after End: dropped
	if evs, ended := div.Take(); len(evs) != 0 || !ended {
		t.Fatalf("after End: %d events, ended %v", len(evs), ended)
	}
	got := collect(t, w, 7)
	want := []uint64{9, 10, 11, 12, 13, 14, 15}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("resumed watcher read %v, want %v", got, want)
	}
	nb.mu.Lock()
	kept := nb.slot(15).Time
	nb.mu.Unlock()
	if kept != at {
		t.Fatalf("imported event's time %d, recorded at %d", kept, at)
	}
}

// A resumed history holds only what it was given: a watcher asking for
// older events is told where it starts, however large this bus's history.
func TestResumeHoldsWhatItWasGiven(t *testing.T) {
	old := NewBus(Options{History: 8})
	publishN(old, "a", 20) // holds 13-20
	snap, head := old.Snapshot()
	if len(snap) != 8 || snap[0].Seq != 13 {
		t.Fatalf("snapshot %d events from %d", len(snap), snap[0].Seq)
	}
	nb := NewBus(Options{History: chunkSize})
	if err := nb.Resume(old.BootID(), snap, head); err != nil {
		t.Fatal(err)
	}
	after := uint64(5)
	var re *RangeError
	if _, _, err := nb.Watch(Filter{}, &after); !errors.As(err, &re) || re.Oldest != 13 || re.Newest != 20 {
		t.Fatalf("watch after 5: %v", err)
	}
	// An empty history at head 0 (nothing happened yet) resumes too.
	empty := NewBus(Options{})
	if err := empty.Resume("b00t", nil, 0); err != nil || empty.Head() != 0 {
		t.Fatalf("empty resume: %v, head %d", err, empty.Head())
	}
}

func TestResumeRefusesGapsAndUsedBuses(t *testing.T) {
	old := NewBus(Options{History: chunkSize})
	publishN(old, "a", 5)
	snap, head := old.Snapshot()
	used := NewBus(Options{})
	publishN(used, "b", 1)
	if err := used.Resume(old.BootID(), snap, head); err == nil {
		t.Fatal("resumed on a bus that had published")
	}
	gap := NewBus(Options{})
	if err := gap.Resume(old.BootID(), append(snap[:2:2], snap[3:]...), head); err == nil {
		t.Fatal("resumed a history with a gap")
	}
	short := NewBus(Options{})
	if err := short.Resume(old.BootID(), snap, head+1); err == nil {
		t.Fatal("resumed a history that ends before its head")
	}
	other := NewBus(Options{})
	if err := other.Resume(old.BootID(), snap[:2], 2); err != nil {
		t.Fatal(err)
	}
	if err := other.Resume("another", snap[2:], head); err == nil {
		t.Fatal("resumed with another boot id")
	}
	if _, _, _, err := old.Divert(head + 1); err == nil {
		t.Fatal("diverted after a sequence not yet assigned")
	}
}

func TestEventsWireRoundTrip(t *testing.T) {
	tup := Tuple{Remote: netip.MustParseAddrPort("10.0.0.1:4000"), Local: netip.MustParseAddrPort("[::1]:80")}
	evs := []Event{
		{Seq: 1, Time: 7, Listener: "ln-1", Kind: KindConnectionClosed, Close: CloseKicked, Conn: 3, Tuple: tup,
			BytesIn: 5, BytesOut: 6, Duration: time.Second},
		{Seq: 2, Listener: "ln-1", Kind: KindLimitsChanged, Detail: &Detail{Limits: Limits{MaxConnections: AtMost(0), Overflow: OverflowQueue, QueueTimeout: time.Minute}}},
		{Seq: 3, Listener: "ln-1", Kind: KindLimitsChanged, Detail: &Detail{Limits: Limits{AcceptRate: 1.5}}},
		{Seq: 4, Listener: "ln-1", Kind: KindConnectionData, Conn: 3, Detail: &Detail{Data: []byte("hi"), Outbound: true}},
	}
	var buf bytes.Buffer
	if err := WriteEvents(&buf, evs); err != nil {
		t.Fatal(err)
	}
	got, err := ReadEvents(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, evs) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, evs)
	}
}

func TestSinceAfterClose(t *testing.T) {
	b := NewBus(Options{History: 8})
	for range 3 {
		b.Publish(Event{Kind: KindListenerStarted, Listener: "ln-1"})
	}
	b.Close()
	b.Publish(Event{Kind: KindListenerClosed, Listener: "ln-1"}) // recorded after Close
	evs, err := b.Since(1, 2)
	if err != nil || len(evs) != 2 || evs[0].Seq != 2 || evs[1].Seq != 3 {
		t.Fatalf("Since(1, 2) = %v, %v; want 2 and 3", evs, err)
	}
	evs, err = b.Since(2, 0)
	if err != nil || len(evs) != 2 || evs[1].Seq != 4 || evs[1].Kind != KindListenerClosed {
		t.Fatalf("Since(2, 0) = %v, %v; want 3 and 4", evs, err)
	}
	for range 10 {
		b.Publish(Event{Kind: KindListenerStarted, Listener: "ln-1"})
	}
	var re *RangeError
	if _, err := b.Since(1, 0); !errors.As(err, &re) || re.Oldest <= 2 {
		t.Fatalf("Since(1) past the history = %v; want a RangeError", err)
	}
}
