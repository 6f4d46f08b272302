package events

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// Errors returned by the bus.
var (
	// ErrCompacted: the resume point is older than the history holds, or
	// newer than the head. The error is a *RangeError.
	ErrCompacted = errors.New("sequence not held")
	// ErrSlow: the watcher fell too far behind and was cut loose.
	ErrSlow = errors.New("watcher too slow")
	// ErrTooManyWatchers: the daemon-wide watcher cap is reached.
	ErrTooManyWatchers = errors.New("too many watchers")
	// ErrClosed: the bus is shutting down.
	ErrClosed = errors.New("event bus closed")
)

// RangeError reports a resume sequence outside the history.
type RangeError struct {
	Asked, Oldest, Newest uint64
}

func (e *RangeError) Error() string {
	return fmt.Sprintf("sequence %d not held: history holds %d to %d", e.Asked, e.Oldest, e.Newest)
}

// Unwrap makes errors.Is(err, ErrCompacted) true.
func (e *RangeError) Unwrap() error { return ErrCompacted }

// Defaults for Options.
const (
	DefaultHistory     = 640 * 1024 // a minute at 10,000 events a second
	MaxHistory         = 1 << 26    // about 10 GiB of events; NewBus caps History here
	DefaultHistoryData = 16 << 20   // bytes of connection data the history holds
	DefaultWatcherLag  = 64 * 1024
	DefaultMaxWatchers = 1024
	chunkSize          = 4096
	maxScan            = 4096 // events scanned under the lock per Next
	// maxBatchData bounds the connection data in one batch: a batch stops
	// before the data event that would pass it, unless it is the first.
	// With the batch's other events, this bounds what a stream whose client
	// stopped reading holds in its last reply.
	maxBatchData = 64 << 10
)

// Options size the bus.
type Options struct {
	History int // events held for resume
	// HistoryData bounds the bytes of connection data the history holds.
	// Past it, the oldest data events held lose their bytes (they keep
	// their length), so a watcher that resumes may find some empty.
	HistoryData int64
	WatcherLag  int // how far a watcher may fall behind the head before it is cut
	MaxWatchers int // concurrent watchers: slots, held until each watcher's Close

	// HistoryBytes bounds the bytes the history holds, its events counted
	// by their size and connection data by its length. Past it, the oldest
	// events go, as past History.
	HistoryBytes int64
}

// DefaultHistoryBytes bounds the whole history: every event by its size
// (144 bytes, 344 with details) and its connection data.
const DefaultHistoryBytes = 32 << 20

// Bus assigns every event a daemon-wide sequence, keeps the most recent ones
// in a ring, and wakes watchers. Publish never blocks on a watcher.
type Bus struct {
	bootID      string
	size        uint64 // ring capacity in events, a multiple of chunkSize
	held        uint64 // events held for resume: History, at most size
	lag         uint64
	maxWatchers int

	mu      sync.Mutex
	chunks  [][]Event // allocated on first use, let go once nothing held is in them
	spare   []Event   // a chunk let go, cleared, kept for the next one needed
	head    uint64    // last sequence assigned; 0 before the first event
	tail    uint64    // oldest sequence held (head+1 when none is, 1 at first)
	closed  bool
	data    dataQueue // the held events that carry data, oldest first
	dataMax int64     // HistoryData
	meta    int64     // bytes of the held events, their data aside (metaBytes)
	budget  int64     // HistoryBytes

	tailSeq atomic.Uint64 // tail, for publishers measuring a watcher's lag
	pressed atomic.Bool   // the held events fill more than half of budget
	// Upgrades (upgrade.go): the oldest sequence this bus holds when it
	// continues another's history (Resume), and where Record sends events
	// once this bus's history was handed over (Divert).
	floor    uint64
	diverted *Diversion

	wmu      sync.Mutex
	watchers atomic.Pointer[[]*Watcher] // woken by Publish; copy on write under wmu
	slots    atomic.Int64               // watchers not yet Closed, cut ones included; written under wmu
	dataCap  atomic.Int64               // largest data cap of the data watchers; 0: none

	slowCuts atomic.Uint64 // watchers cut loose for falling behind
	unsent   atomic.Uint64 // events those watchers had not been sent when cut
}

// Stats are the bus's counters, for metrics.
type Stats struct {
	Head     uint64 // last sequence assigned: events published this boot
	Watchers int    // watchers not yet closed by their readers, cut ones included
	SlowCuts uint64 // watchers cut loose (ErrSlow) since the bus started
	Unsent   uint64 // events those watchers had not been sent when cut
	// Held is how many events the history holds, and HeldBytes their
	// bytes as its budget counts them, of at most Budget.
	Held      uint64
	HeldBytes int64
	Budget    int64
}

// Stats returns the bus's counters.
func (b *Bus) Stats() Stats {
	b.mu.Lock()
	head, held, bytes := b.head, b.head+1-b.tail, b.meta+b.data.bytes
	b.mu.Unlock()
	return Stats{Head: head, Watchers: b.Watchers(), SlowCuts: b.slowCuts.Load(), Unsent: b.unsent.Load(),
		Held: held, HeldBytes: bytes, Budget: b.budget}
}

// MaxDataBytes bounds the bytes one data event carries.
const MaxDataBytes = 64 << 10

// DataCap returns how many bytes of connection data to record per event: 0
// while no watcher asks for data, so the data path costs nothing then.
func (b *Bus) DataCap() int { return int(b.dataCap.Load()) }

// NewBus returns a bus sized by opts; zero fields take the defaults.
func NewBus(opts Options) *Bus {
	if opts.History <= 0 {
		opts.History = DefaultHistory
	}
	opts.History = min(opts.History, MaxHistory)
	if opts.WatcherLag <= 0 {
		opts.WatcherLag = DefaultWatcherLag
	}
	if opts.MaxWatchers <= 0 {
		opts.MaxWatchers = DefaultMaxWatchers
	}
	if opts.HistoryData <= 0 {
		opts.HistoryData = DefaultHistoryData
	}
	if opts.HistoryBytes <= 0 {
		opts.HistoryBytes = DefaultHistoryBytes
	}
	n := (opts.History + chunkSize - 1) / chunkSize
	size := uint64(n * chunkSize)
	lag := uint64(opts.WatcherLag)
	// A watcher must be cut before the ring overwrites what it has not read.
	if lag > size-chunkSize/2 {
		lag = size - chunkSize/2
	}
	// A watcher cut for lag resumes after the last event it was sent: half
	// the history stays as the slack it has to come back in.
	lag = min(lag, max(1, uint64(opts.History)/2))
	var id [8]byte
	_, _ = rand.Read(id[:])
	b := &Bus{
		bootID:      hex.EncodeToString(id[:]),
		size:        size,
		held:        uint64(opts.History),
		lag:         lag,
		maxWatchers: opts.MaxWatchers,
		chunks:      make([][]Event, n),
		tail:        1,
		dataMax:     min(opts.HistoryData, opts.HistoryBytes),
		budget:      opts.HistoryBytes,
	}
	b.tailSeq.Store(1)
	b.setWatchersLocked(nil)
	return b
}

// BootID identifies this bus, and so this daemon process.
func (b *Bus) BootID() string { return b.bootID }

// Head returns the last sequence assigned.
func (b *Bus) Head() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.head
}

// Wake tells the watchers that events up to seq are recorded, and cuts
// those that have fallen too far behind.
func (b *Bus) Wake(seq uint64) {
	for _, w := range *b.watchers.Load() {
		w.notify(seq, b.lag)
	}
}

// Watchers returns how many watchers hold a slot: those not yet closed by
// their readers, cut ones included.
func (b *Bus) Watchers() int { return int(b.slots.Load()) }

// Close ends every watcher with ErrClosed and refuses new ones.
func (b *Bus) Close() {
	// Under wmu, as Watch registers: a Watch either sees closed, or is on
	// the list cut here.
	b.wmu.Lock()
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	list := *b.watchers.Load()
	b.wmu.Unlock()
	for _, w := range list {
		w.cut(ErrClosed)
	}
}
