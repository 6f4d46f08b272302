package events

import (
	"context"
	"time"
)

// Next blocks until events match, then appends up to cap(dst) of them to
// dst[:0]. It also returns the last sequence scanned: once the batch is
// delivered, a resume after that sequence loses nothing. It fails with
// ErrSlow when the watcher was cut loose, ErrClosed when the bus closed, or
// the context's error.
func (w *Watcher) Next(ctx context.Context, dst []Event) ([]Event, uint64, error) {
	return w.NextBatch(ctx, dst, 0)
}

// NextBatch is Next for a stream under load: when the previous batch went
// out less than linger ago, a batch under half full waits up to linger for
// more events to join it. A busy stream then sends a few large batches
// rather than many small ones (less gRPC and syscall work per event, on both
// ends), and a quiet stream's first event still goes out at once.
func (w *Watcher) NextBatch(ctx context.Context, dst []Event, linger time.Duration) ([]Event, uint64, error) {
	dst = dst[:0]
	if cap(dst) == 0 {
		dst = make([]Event, 0, 256)
	}
	data := 0 // connection data bytes in the batch
	busy := linger > 0 && time.Since(w.sent) < linger
	var timer <-chan time.Time
	expired := false
	for {
		select {
		case <-w.done:
			if len(dst) > 0 { // deliver what was gathered; the next call fails
				return w.deliver(dst), w.cursor.Load(), nil
			}
			return nil, w.cursor.Load(), w.err
		default:
		}
		var more, full bool
		dst, more, full = w.scan(dst, &data)
		through := w.cursor.Load()
		if more && !full {
			continue // scanned maxScan events; more to scan
		}
		if len(dst) > 0 && (!busy || expired || full || len(dst) >= cap(dst)/2) {
			return w.deliver(dst), through, nil
		}
		if len(dst) > 0 && timer == nil {
			t := w.lingerTimer(linger)
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-w.wake:
		case <-timer:
			expired = true // scan once more, then deliver
		case <-w.done:
		case <-ctx.Done():
			if len(dst) > 0 {
				return w.deliver(dst), through, nil
			}
			return nil, through, ctx.Err()
		}
	}
}

// deliver notes when a batch went out, for NextBatch's linger.
func (w *Watcher) deliver(dst []Event) []Event {
	w.sent = time.Now()
	return dst
}

// lingerTimer returns the watcher's timer, reused across batches, set to d.
func (w *Watcher) lingerTimer(d time.Duration) *time.Timer {
	if w.timer == nil {
		w.timer = time.NewTimer(d)
	} else {
		w.timer.Reset(d)
	}
	return w.timer
}

// scan appends the matching events after the watcher's position to dst, up
// to maxScan events scanned, and reports whether more remain and whether
// the batch is full: at its capacity, or at maxBatchData bytes of
// connection data, counted in *data.
func (w *Watcher) scan(dst []Event, data *int) (_ []Event, more, full bool) {
	b := w.bus
	seq := w.cursor.Load() + 1
	b.mu.Lock()
	if seq < b.oldest() {
		behind := b.head + 1 - seq
		b.mu.Unlock()
		w.cutSlow(behind)
		return dst, false, false
	}
	for scanned := 0; seq <= b.head && len(dst) < cap(dst) && scanned < maxScan; seq++ {
		scanned++
		e := b.slot(seq)
		if !w.match(e) {
			continue
		}
		if e.Kind == KindConnectionData && e.Detail != nil {
			n := min(len(e.Detail.Data), w.dataMax)
			if *data+n > maxBatchData && len(dst) > 0 {
				full = true
				break // seq is left for the next batch
			}
			*data += n
		}
		dst = append(dst, *e)
	}
	more = seq <= b.head
	b.mu.Unlock()
	w.cursor.Store(seq - 1)
	return dst, more, full || len(dst) >= cap(dst)
}
