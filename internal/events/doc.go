// Package events is the daemon's event vocabulary and its bus: one
// daemon-wide sequence, a bounded in-memory history, and watchers that read
// from that history at their own pace without ever slowing a publisher.
//
// The files: events.go holds the vocabulary (Kind, the reasons, Event);
// bus.go the Bus, its Options, Stats, Wake and Close; ring.go the bounded
// history (Record, Publish, slot, oldest), its byte budget (metaBytes,
// evictLocked) and its data budget (holdDataLocked, dropData, dataQueue); watcher.go the watchers (Filter,
// Watch, Watcher, notify, cut, cutSlow, match, remove, Close); batch.go how
// a watcher's reader takes its events (Next, NextBatch, scan); connid.go
// connection ids; upgrade.go how an upgrade hands the history to a new
// process (Snapshot, Divert, Resume, Import), Divert's queue taken under
// Bus.mu like the ring.
//
// # Goroutines
//
// Publishers are the listener's goroutines: each connection's goroutine
// (data, half-closed and closed events), each listener's accept goroutine
// (opened, rejected, accept errors), and the control paths that start, change
// and close listeners. They call Record, Publish, Wake and DataCap, some of
// them while holding a lock of their own (Record exists so that a caller can
// record under its lock and Wake after releasing it). A publisher never
// blocks on a watcher: it waits only on the package's locks (below), which
// are held for short work and never across a channel operation or a call
// out of the package; it wakes a watcher with a send that never blocks on a channel of
// one slot; and a watcher that fell more than the watcher lag behind is cut
// (cutSlow) on the publisher's goroutine, at the cost of taking Bus.wmu to
// take it off the list Wake reads.
//
// Each watcher has one reader goroutine (a WatchEvents stream's handler):
// it calls Watch, then Next or NextBatch, one call at a time, then Close.
// The reader alone writes the watcher's cursor (publishers read it,
// atomically, to measure lag), and owns its linger timer and the time its
// last batch went out. NextBatch is the only place in the package that
// blocks on anything but a mutex: on the watcher's wake channel, its linger
// timer, its done channel and the caller's context. While it scans, the
// reader holds Bus.mu over at most maxScan events.
//
// A watcher is ended once, by whoever comes first: a publisher (cutSlow,
// ErrSlow), the reader itself (scan finds its position overwritten:
// ErrSlow; Close: ErrClosed), or the goroutine that shuts the daemon down
// (Bus.Close: ErrClosed). Ending it closes its done channel; it does not
// wait for the reader. Its slot is given back only by its reader's Close.
//
// Stats, Head, Watchers, DataCap and BootID may be called from any
// goroutine. The Bus fields set by NewBus, and a Watcher's filter and start
// set by Watch, do not change after; the Watcher is published to
// publishers by the atomic store of the watcher list.
//
// # Locks
//
// Bus.mu guards the ring: its chunks (and the spare) and the events in
// them, head, tail, closed, the bytes held (meta) and the dataQueue of
// held data events; Record stores tail and whether the history is past
// half its byte budget in atomics, for publishers measuring a watcher's
// lag. Bus.wmu serializes changes to the
// watcher list (the copy-on-write watchers pointer, slots and dataCap,
// which setWatchersLocked stores; Wake reads the list without it), and makes
// Watch's check of closed and its registration one step against Bus.Close.
// Each Watcher has two sync.Once: once, which guards err and the closing of
// done, and close, under which Close gives the slot back once.
//
// The lock order is
//
//	Watcher.close → Bus.wmu → Bus.mu
//
// Watcher.Close takes Bus.wmu (in remove) inside close; Watch and Bus.Close
// take Bus.mu inside Bus.wmu. Bus.mu is a leaf: nothing else is taken while
// it is held (scan releases it before cutSlow). Watcher.once is a leaf too:
// cut and cutSlow hold it only to set err, count and close done; cutSlow
// calls remove after it, and Bus.Close cuts after releasing Bus.wmu. No
// lock of the package is held while calling out of it, so callers' locks
// (a listener's, the manager's) always come before all of these.
package events
