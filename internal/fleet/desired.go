package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/listenerd/listenerd/internal/declare"
	"github.com/listenerd/listenerd/internal/listener"
)

// Desired makes one host's desired listeners in the bucket true: it
// watches the host's desired keys (their values first, then each change)
// and, once it has them all and after each burst of changes, hands the
// set to Reconcile and writes the status of each listener back under its
// status key. When NATS goes and comes back, it watches again from the
// start and reconciles then: what changed meanwhile is caught up.
type Desired struct {
	Conn     *nats.Conn
	Host     string
	Replicas int // of the bucket, when Desired creates it
	Log      *slog.Logger
	// Reconcile makes set true and returns the status of each of its
	// listeners, by name; Desired fills in Revision and Updated.
	Reconcile func(ctx context.Context, set *declare.Set) map[string]Status
	// Invalid is told of a desired value that does not read; the
	// listener's last value that did stays in force, and without one (a
	// daemon started since) the listener is left as it is.
	Invalid func(err error)
	// Resync reconciles this often even when no key changes, putting
	// back changes made through the API and trying failed changes again;
	// 0: only on changes.
	Resync time.Duration
	// Quiet is how long the watch must be still before a burst of changes
	// is reconciled (at most ten times it from the burst's start); 0:
	// declare.DefaultQuiet.
	Quiet time.Duration
}

// desiredRetry is how long Run waits to watch again after a failure while
// NATS stays connected (a bucket not created yet in a cluster electing its
// leader, say).
const desiredRetry = time.Second

// opWait bounds each request to NATS (open the bucket, write a status).
const opWait = 10 * time.Second

var errReconnected = errors.New("reconnected to NATS")

// Run watches and reconciles until ctx ends.
func (d *Desired) Run(ctx context.Context) {
	connected := d.Conn.StatusChanged(nats.CONNECTED)
	defer d.Conn.RemoveStatusListener(connected)
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for ctx.Err() == nil {
		err := d.watch(ctx, connected)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errReconnected) {
			continue
		}
		if d.Conn.IsConnected() && d.Log != nil {
			d.Log.Warn("desired listeners: the bucket is not watched; trying again", "bucket", Bucket, "err", err)
		}
		retry.Reset(desiredRetry)
		select {
		case <-ctx.Done():
			return
		case <-connected:
		case <-retry.C:
		}
	}
}

// keyState is what the watch knows of one desired key.
type keyState struct {
	entry    jetstream.KeyValueEntry
	good     *declare.Entry // its last value that read
	invalid  error          // why its value does not read
	reported *Status        // the status last written
}

// watch watches the desired keys until ctx ends, NATS reconnects
// (errReconnected) or the watch fails.
func (d *Desired) watch(ctx context.Context, connected <-chan nats.Status) error {
	if !d.Conn.IsConnected() {
		return nats.ErrConnectionClosed
	}
	js, err := jetstream.New(d.Conn)
	if err != nil {
		return err
	}
	octx, cancel := context.WithTimeout(ctx, opWait)
	kv, err := OpenBucket(octx, js, d.Replicas)
	cancel()
	if err != nil {
		return fmt.Errorf("bucket %s: %w", Bucket, err)
	}
	w, err := kv.Watch(ctx, HostKeys(DesiredPrefix, d.Host))
	if err != nil {
		return fmt.Errorf("watching %s: %w", HostKeys(DesiredPrefix, d.Host), err)
	}
	defer w.Stop()
	quiet := d.Quiet
	if quiet <= 0 {
		quiet = declare.DefaultQuiet
	}
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	var resync <-chan time.Time
	if d.Resync > 0 {
		t := time.NewTicker(d.Resync)
		defer t.Stop()
		resync = t.C
	}
	var first time.Time
	keys := map[string]*keyState{}
	gone := map[string]bool{} // names whose status key is to be deleted
	initial := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-connected:
			return errReconnected
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("the watch ended")
			}
			if e == nil { // every value is in: reconcile them
				initial = false
				d.reconcile(ctx, kv, keys, gone)
				continue
			}
			d.take(keys, gone, e)
			if initial {
				continue
			}
			now := time.Now()
			if first.IsZero() {
				first = now
			}
			settle.Reset(min(quiet, max(0, first.Add(10*quiet).Sub(now))))
		case <-settle.C:
			first = time.Time{}
			d.reconcile(ctx, kv, keys, gone)
		case <-resync:
			if !initial {
				d.reconcile(ctx, kv, keys, gone)
			}
		}
	}
}

// take notes a change of a desired key.
func (d *Desired) take(keys map[string]*keyState, gone map[string]bool, e jetstream.KeyValueEntry) {
	_, _, name, ok := SplitKey(e.Key())
	if !ok {
		return
	}
	if e.Operation() != jetstream.KeyValuePut {
		delete(keys, name)
		gone[name] = true
		return
	}
	ks := keys[name]
	if ks == nil {
		ks = &keyState{}
		keys[name] = ks
	}
	delete(gone, name)
	ks.entry = e
	ent, err := declare.ParseEntry(e.Key(), name, e.Value(), listener.DefaultDrainTimeout)
	ks.invalid = err
	if err != nil {
		if d.Invalid != nil {
			d.Invalid(fmt.Errorf("%s revision %d: %w", Bucket, e.Revision(), err))
		}
		return
	}
	ks.good = &ent
}

// reconcile makes the keys true and writes their status.
func (d *Desired) reconcile(ctx context.Context, kv jetstream.KeyValue, keys map[string]*keyState, gone map[string]bool) {
	set := &declare.Set{Source: BucketSource, Drain: listener.DefaultDrainTimeout}
	for _, name := range slices.Sorted(maps.Keys(keys)) {
		switch ks := keys[name]; {
		case ks.good != nil:
			set.Entries = append(set.Entries, *ks.good)
		case set.Keep == nil:
			set.Keep = map[string]bool{name: true}
		default:
			set.Keep[name] = true
		}
	}
	sts := d.Reconcile(ctx, set)
	now := time.Now().UTC()
	for name, ks := range keys {
		st, ok := sts[name]
		if !ok {
			st = Status{State: "missing"}
		}
		if ks.invalid != nil {
			st.Error = ks.invalid.Error()
		}
		st.Revision = ks.entry.Revision()
		if ks.reported != nil && ks.reported.same(st) {
			continue
		}
		st.Updated = now
		if err := d.put(ctx, kv, StatusKey(d.Host, name), st); err != nil {
			d.warnStatus(err)
			return // the next reconcile (or the watch after a reconnect) writes it
		}
		ks.reported = &st
	}
	for name := range gone {
		octx, cancel := context.WithTimeout(ctx, opWait)
		err := kv.Delete(octx, StatusKey(d.Host, name))
		cancel()
		if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			d.warnStatus(err)
			return
		}
		delete(gone, name)
	}
}

func (d *Desired) put(ctx context.Context, kv jetstream.KeyValue, key string, st Status) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	octx, cancel := context.WithTimeout(ctx, opWait)
	defer cancel()
	_, err = kv.Put(octx, key, b)
	return err
}

func (d *Desired) warnStatus(err error) {
	if d.Log != nil {
		d.Log.Warn("desired listeners: status not written to the bucket", "bucket", Bucket, "err", err)
	}
}
