package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/declare"
	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
)

// Desired makes one host's desired listeners in the bucket true: it
// watches the host's desired keys (their values first, then each change)
// and, once it has them all and after each burst of changes, reconciles
// them (declare.ReconcileSet) and writes the status of each listener
// back under its status key. When NATS goes and comes back, it watches
// again from the start and reconciles then: what changed meanwhile is
// caught up, and each status the bucket holds is written again if it is
// not what the listener says now.
//
// # Statuses
//
// A status follows its listener between reconciles too: a listener-level
// event on Bus (started, accept error, closed) or a close beginning
// (Closing) has the statuses computed again after Quiet, and those that
// changed written. Connection events are not watched, and a burst of
// changes is one pass, so a storm of connections writes nothing. While
// NATS is away nothing is written; once it is back the watch starts
// again and writes each status as it is then (the latest, not each step).
//
// A listener whose desired key is deleted is closed, draining for the
// key's last drain timeout (declare.Set.Drains; the default 30 s when the
// daemon did not see the key's value, after a restart). Its status key
// says "draining" while its connections drain and is deleted once it is
// closed. At each start of the watch, status keys of this host that name
// no desired key and no listener are deleted: what a daemon stopped, or
// cut off from NATS, left behind.
type Desired struct {
	Conn     *nats.Conn
	Host     string
	Replicas int // of the bucket, when Desired creates it
	Log      *slog.Logger
	// Target carries the changes out, and List returns the listeners
	// there are, as ListListeners does (service.Declared).
	Target declare.Target
	List   func() []*listenerdv1.Listener
	// Applied, when set, is told of each change carried out or failed.
	Applied func(r declare.Result)
	// Invalid is told of a desired value that does not read; the
	// listener's last value that did stays in force, and without one (a
	// daemon started since) the listener is left as it is.
	Invalid func(err error)
	// Bus, when set, is the daemon's event bus: its listener-level events
	// have the statuses written again.
	Bus *events.Bus
	// Closing, when set, receives when a listener's close begins (its
	// connections drain, and no event says so until it is closed): the
	// statuses are written again.
	Closing <-chan struct{}
	// Resync reconciles this often even when no key changes, putting
	// back changes made through the API and trying failed changes again;
	// 0: only on changes.
	Resync time.Duration
	// Quiet is how long the watch must be still before a burst of changes
	// is reconciled (at most ten times it from the burst's start), and how
	// long a burst of listener changes is gathered before the statuses
	// are written; 0: declare.DefaultQuiet.
	Quiet time.Duration
	// Heartbeat is how often the host key (HostKey) is written, besides
	// once at start and at each reconnect; 0: DefaultHeartbeat. Boot and
	// Version go into it (Host).
	Heartbeat time.Duration
	Boot      string
	Version   string
}

// stopWait bounds the last write of the host key, Stopped, at shutdown:
// a NATS that does not answer holds the shutdown no longer.
const stopWait = 2 * time.Second

// desiredRetry is how long Run waits to watch again after a failure while
// NATS stays connected (a bucket not created yet in a cluster electing its
// leader, say), and to write statuses again after a write failed.
const desiredRetry = time.Second

// opWait bounds each request to NATS (open the bucket, write a status).
const opWait = 10 * time.Second

// Status states besides the listener's own (listening, failed, draining).
const (
	// StateMissing: no listener has the name: its create failed (Error
	// says why), or it was closed through the API and the next reconcile
	// puts it back.
	StateMissing = "missing"
	// StateDraining: the listener is closing, its connections draining;
	// with its desired key deleted, its status key goes once it is
	// closed.
	StateDraining = "draining"
)

var errReconnected = errors.New("reconnected to NATS")

// statusKinds are the events after which statuses are written again: a
// listener bound (created, rebound, put back), its accept failing, its
// close ended.
var statusKinds = []events.Kind{events.KindListenerStarted, events.KindAcceptError, events.KindListenerClosed}

// Run watches and reconciles, and writes the host key, until ctx ends;
// then it writes the host key once more, Stopped (see heartbeat).
func (d *Desired) Run(ctx context.Context) {
	connected := d.Conn.StatusChanged(nats.CONNECTED)
	defer d.Conn.RemoveStatusListener(connected)
	ch := &changes{poke: make(chan struct{}, 1), closed: map[string]bool{}, opened: make(chan struct{}, 1)}
	var hb sync.WaitGroup
	hb.Go(func() { d.heartbeat(ctx, ch.opened) })
	defer hb.Wait()
	if d.Bus != nil {
		ectx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Go(func() { d.watchEvents(ectx, ch) })
		defer wg.Wait()
		defer cancel()
	}
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for ctx.Err() == nil {
		err := d.watch(ctx, connected, ch)
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

// heartbeat writes the host key (Host) each time the watch opened the
// bucket (opened: at start and after each reconnect), and every Heartbeat
// until ctx ends, apart from the watch: a long reconcile does not hold
// it. It never creates the bucket (the watch does: two creates at once
// are not wanted); a write that fails is logged once and tried again at
// the next beat. Once ctx ends (the daemon stops), it writes the key once
// more with Stopped, within stopWait and only while NATS is connected,
// and only over a value this process wrote (its boot id and pid): a
// process that wrote the key since (an upgrade's new process, which keeps
// the boot id) is not marked stopped.
func (d *Desired) heartbeat(ctx context.Context, opened <-chan struct{}) {
	every := d.Heartbeat
	if every <= 0 {
		every = DefaultHeartbeat
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	key := HostKey(d.Host)
	me := Host{Boot: d.Boot, PID: os.Getpid(), Interval: every.String(), Version: d.Version}
	value := func(stopped bool) []byte {
		h := me
		h.Stopped, h.Updated = stopped, time.Now().UTC()
		b, _ := json.Marshal(h)
		return b
	}
	var kv jetstream.KeyValue
	failing := false
	for {
		select {
		case <-ctx.Done():
			if d.Conn.IsConnected() {
				d.stopped(key, me, value(true))
			}
			return
		case <-opened:
		case <-tick.C:
		}
		err := d.beat(ctx, &kv, key, value(false))
		switch {
		case err == nil:
			failing = false
		case ctx.Err() != nil:
		case errors.Is(err, jetstream.ErrBucketNotFound):
			kv = nil // the watch creates it, and says so (opened)
		default:
			kv = nil // opened again at the next beat: the bucket may be new (a NATS restarted without its store)
			if !failing && d.Conn.IsConnected() && d.Log != nil {
				failing = true
				d.Log.Warn("desired listeners: host key not written; trying again at each heartbeat", "key", key, "err", err)
			}
		}
	}
}

// stopped writes the host key's last value, over a value of me's process
// only, within stopWait.
func (d *Desired) stopped(key string, me Host, value []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), stopWait)
	defer cancel()
	js, err := jetstream.New(d.Conn)
	if err != nil {
		return
	}
	kv, err := js.KeyValue(ctx, Bucket)
	// Again when the key changed between the read and the write: a beat
	// cancelled by the shutdown may still be stored.
	for i := 0; err == nil && i < 3; i++ {
		var e jetstream.KeyValueEntry
		if e, err = kv.Get(ctx, key); err != nil {
			break
		}
		var h Host
		if json.Unmarshal(e.Value(), &h) != nil || h.Boot != me.Boot || h.PID != me.PID {
			return // another process's
		}
		if _, err = kv.Update(ctx, key, value, e.Revision()); !errors.Is(err, jetstream.ErrKeyExists) {
			break
		}
	}
	if err != nil && d.Log != nil {
		d.Log.Info("desired listeners: host key not marked stopped", "key", key, "err", err)
	}
}

// beat opens the bucket into *kv if it is not yet (ErrBucketNotFound when
// there is none), and puts value under key.
func (d *Desired) beat(ctx context.Context, kv *jetstream.KeyValue, key string, value []byte) error {
	if !d.Conn.IsConnected() {
		return nats.ErrDisconnected
	}
	octx, cancel := context.WithTimeout(ctx, opWait)
	defer cancel()
	if *kv == nil {
		js, err := jetstream.New(d.Conn)
		if err != nil {
			return err
		}
		b, err := js.KeyValue(octx, Bucket)
		if err != nil {
			return fmt.Errorf("bucket %s: %w", Bucket, err)
		}
		*kv = b
	}
	_, err := (*kv).Put(octx, key, value)
	return err
}

// changes is what the events goroutine tells the watch: poke, that
// listeners changed, and closed, the ids of listeners whose
// listener_closed event was published (one may still be listed a moment
// after it).
type changes struct {
	poke   chan struct{}
	mu     sync.Mutex
	closed map[string]bool
	// opened tells the heartbeat that the watch opened the bucket (and
	// created it if need be): the host key is written then.
	opened chan struct{}
}

func (c *changes) changed() {
	select {
	case c.poke <- struct{}{}:
	default:
	}
}

func (c *changes) close(id string) {
	c.mu.Lock()
	c.closed[id] = true
	c.mu.Unlock()
}

// isClosed reports whether id's listener_closed event was seen.
func (c *changes) isClosed(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed[id]
}

// forget drops the closed ids no longer listed: they are not again.
func (c *changes) forget(listed map[string]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.closed {
		if !listed[id] {
			delete(c.closed, id)
		}
	}
}

// watchEvents watches the bus's listener-level events until ctx ends or
// the bus closes, and tells ch of each batch. Cut loose (it is never
// slow, but a full history is possible), it watches again from the head
// and tells ch: the statuses are computed from the listeners, not from
// the events, so nothing is lost but the ids of listeners closed
// meanwhile, which are gone from the list a moment after.
func (d *Desired) watchEvents(ctx context.Context, ch *changes) {
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	poll := time.NewTicker(statusPoll)
	defer poll.Stop()
	now, ended := context.WithCancel(ctx)
	ended() // a context already ended: Next returns what is there at once
	buf := make([]events.Event, 0, 64)
	for ctx.Err() == nil {
		w, _, err := d.Bus.Watch(events.Filter{Kinds: statusKinds}, nil)
		if errors.Is(err, events.ErrClosed) {
			return
		}
		if err != nil { // too many watchers: try again
			if d.Log != nil {
				d.Log.Warn("desired listeners: events not watched; statuses follow reconciles only until they are", "err", err)
			}
			retry.Reset(desiredRetry)
			select {
			case <-ctx.Done():
				return
			case <-retry.C:
			}
			continue
		}
		ch.changed()
		for {
			// What is there now, without waiting: polled, as a
			// watcher waiting on the bus would be woken at every
			// connection's events, to find none of its kinds.
			evs, _, err := w.Next(now, buf)
			if err != nil && !errors.Is(err, context.Canceled) { // cut, or the bus closed
				break
			}
			for _, e := range evs {
				if e.Kind == events.KindListenerClosed {
					ch.close(e.Listener)
				}
			}
			if len(evs) > 0 {
				ch.changed()
			}
			select {
			case <-ctx.Done():
			case <-poll.C:
			}
			if ctx.Err() != nil {
				break
			}
		}
		w.Close()
	}
}

// statusPoll is how often the desired listeners' watcher of the bus looks
// for listener-level events (statusKinds).
const statusPoll = 50 * time.Millisecond

// keyState is what the watch knows of one name: its desired key, and its
// status key.
type keyState struct {
	desired bool   // its desired key holds a value
	rev     uint64 // the desired key's revision (of its deletion, when deleted)
	// The two as the last reconcile took them: while they differ from
	// desired and rev, a reconcile is due and no status is written.
	recDesired bool
	recRev     uint64
	good       *declare.Entry // its last value that read, while desired
	drain      *time.Duration // deleted: the drain timeout of its last value that read
	invalid    error          // why its value does not read
	err        error          // why the last reconcile could not make it true
	// stored: a status key of the name is (or may be) in the bucket;
	// reported is its value, nil when not known.
	stored   bool
	reported *Status
}

// watch watches the desired keys until ctx ends, NATS reconnects
// (errReconnected) or the watch fails.
func (d *Desired) watch(ctx context.Context, connected <-chan nats.Status, ch *changes) error {
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
	select {
	case ch.opened <- struct{}{}:
	default:
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
	settle := stoppedTimer()
	defer settle.Stop()
	status := stoppedTimer() // a pass over the statuses, after listeners changed
	defer status.Stop()
	statusArmed := false
	retry := stoppedTimer() // writing statuses again, after a write failed
	defer retry.Stop()
	var resync <-chan time.Time
	if d.Resync > 0 {
		t := time.NewTicker(d.Resync)
		defer t.Stop()
		resync = t.C
	}
	var first time.Time
	keys := map[string]*keyState{}
	initial := true
	failing := false // a write failed: said once, tried again every desiredRetry
	write := func() {
		err := d.writeStatus(ctx, kv, keys, ch)
		switch {
		case err == nil:
			failing = false
		case !d.Conn.IsConnected():
			// NATS is away: the watch after the reconnect writes each
			// status as it is then.
		default:
			if !failing {
				d.warnStatus(err)
			}
			failing = true
			retry.Reset(desiredRetry)
		}
	}
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
				d.reconcile(ctx, keys)
				d.listStatus(ctx, kv, keys)
				write()
				continue
			}
			d.take(keys, e)
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
			d.reconcile(ctx, keys)
			write()
		case <-resync:
			if !initial {
				d.reconcile(ctx, keys)
				write()
			}
		case <-ch.poke:
			if !statusArmed {
				statusArmed = true
				status.Reset(quiet)
			}
		case <-d.Closing:
			if !statusArmed {
				statusArmed = true
				status.Reset(quiet)
			}
		case <-status.C:
			statusArmed = false
			if !initial {
				write()
			}
		case <-retry.C:
			if !initial {
				write()
			}
		}
	}
}

func stoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

// take notes a change of a desired key.
func (d *Desired) take(keys map[string]*keyState, e jetstream.KeyValueEntry) {
	_, _, name, ok := SplitKey(e.Key())
	if !ok {
		return
	}
	ks := keys[name]
	if ks == nil {
		ks = &keyState{}
		keys[name] = ks
	}
	ks.rev = e.Revision()
	if e.Operation() != jetstream.KeyValuePut {
		if ks.good != nil {
			ks.drain = &ks.good.Drain
		}
		ks.desired, ks.good, ks.invalid, ks.err = false, nil, nil, nil
		return
	}
	ks.desired, ks.drain = true, nil
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

// reconcile makes the desired keys true and notes each one's error.
func (d *Desired) reconcile(ctx context.Context, keys map[string]*keyState) {
	set := &declare.Set{Source: BucketSource, Drain: listener.DefaultDrainTimeout}
	for _, name := range slices.Sorted(maps.Keys(keys)) {
		switch ks := keys[name]; {
		case !ks.desired:
			if ks.drain != nil { // deleted: closed, draining for its last drain timeout
				if set.Drains == nil {
					set.Drains = map[string]time.Duration{}
				}
				set.Drains[name] = *ks.drain
			}
		case ks.good != nil: // its last value that read stays in force
			set.Entries = append(set.Entries, *ks.good)
		case set.Keep == nil:
			set.Keep = map[string]bool{name: true}
		default:
			set.Keep[name] = true
		}
	}
	results, err := declare.ReconcileSet(ctx, d.Target, d.List, set, d.Applied)
	if err != nil && d.Log != nil {
		d.Log.Warn("declared listeners not reconciled", "err", err)
	}
	for _, ks := range keys {
		ks.err, ks.recDesired, ks.recRev = nil, ks.desired, ks.rev
	}
	for _, r := range results {
		if ks := keys[r.Name]; ks != nil && r.Err != nil {
			ks.err = r.Err
		}
	}
}

// listStatus notes the status keys of this host in the bucket and their
// values: writeStatus writes only those that differ from what the
// listeners say now (after a reconnect, none unless something changed),
// and deletes those that name neither a desired key nor a listener. A
// failure is logged; the next watch reads them again.
func (d *Desired) listStatus(ctx context.Context, kv jetstream.KeyValue, keys map[string]*keyState) {
	octx, cancel := context.WithTimeout(ctx, opWait)
	defer cancel()
	w, err := kv.Watch(octx, HostKeys(StatusPrefix, d.Host), jetstream.IgnoreDeletes())
	if err != nil {
		d.warnStatus(err)
		return
	}
	defer func() { _ = w.Stop() }()
	for {
		var e jetstream.KeyValueEntry
		ok := true
		select {
		case e, ok = <-w.Updates():
		case <-octx.Done():
			ok = false
		}
		if !ok {
			// Not all read: a status key of a name may be there unread,
			// so writeStatus writes or deletes each.
			why := octx.Err()
			if why == nil {
				why = errors.New("the watch ended")
			}
			d.warnStatus(fmt.Errorf("reading the statuses: %w", why))
			for _, ks := range keys {
				ks.stored = true
			}
			return
		}
		if e == nil { // every value is in
			return
		}
		_, _, name, ok := SplitKey(e.Key())
		if !ok {
			continue
		}
		ks := keys[name]
		if ks == nil {
			ks = &keyState{}
			keys[name] = ks
		}
		ks.stored = true
		var st Status
		if json.Unmarshal(e.Value(), &st) == nil {
			ks.reported = &st
		}
	}
}

// current returns the status of every named listener there is, by name:
// the newest listening or failed one before any draining one (a rebind's
// old one), those closed left out.
func (d *Desired) current(ch *changes) map[string]Status {
	out := map[string]Status{}
	listed := map[string]bool{}
	for _, l := range d.List() {
		listed[l.GetId()] = true
		st := l.GetStatus()
		state := st.GetState()
		if l.GetName() == "" || ch.isClosed(l.GetId()) {
			continue
		}
		switch state {
		case listenerdv1.State_STATE_LISTENING, listenerdv1.State_STATE_FAILED, listenerdv1.State_STATE_DRAINING:
		default:
			continue
		}
		if _, ok := out[l.GetName()]; ok && state == listenerdv1.State_STATE_DRAINING {
			continue // the name's oldest draining one, unless one is open: the newest open one
		}
		out[l.GetName()] = Status{State: StateName(state), Address: st.GetBoundAddress(), Error: st.GetLastError(), ID: l.GetId()}
	}
	ch.forget(listed)
	return out
}

// StateName is a listener's state as a status and ctl say it: listening,
// failed, draining.
func StateName(s listenerdv1.State) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "STATE_"))
}

// writeStatus writes each name's status as it is now, where it differs
// from what was written: a desired key's, with the reconcile's error or
// why its value does not read; a deleted key's while its listener
// drains; and deletes the status key of a name with neither. A key
// changed since the last reconcile waits for the next one: a status
// names the revision reconciled. It stops at the first failure.
func (d *Desired) writeStatus(ctx context.Context, kv jetstream.KeyValue, keys map[string]*keyState, ch *changes) error {
	if !d.Conn.IsConnected() {
		return nats.ErrDisconnected // the watch after the reconnect writes them
	}
	cur := d.current(ch)
	now := time.Now().UTC()
	for _, name := range slices.Sorted(maps.Keys(keys)) {
		ks := keys[name]
		if ks.desired != ks.recDesired || ks.rev != ks.recRev {
			continue // changed since the reconcile: the next one writes it
		}
		st, present := cur[name]
		switch {
		case !ks.desired && (!present || !ks.stored):
			// No desired key, and no listener of the name draining (or
			// open) under a status key written before: no status.
			if ks.stored {
				octx, cancel := context.WithTimeout(ctx, opWait)
				err := kv.Delete(octx, StatusKey(d.Host, name))
				cancel()
				if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
					return err
				}
			}
			delete(keys, name)
			continue
		case !present:
			st = Status{State: StateMissing}
		}
		if ks.err != nil {
			st.Error = ks.err.Error()
		}
		if ks.invalid != nil {
			st.Error = ks.invalid.Error()
		}
		st.Revision = ks.rev
		if ks.reported != nil && ks.reported.same(st) {
			continue
		}
		st.Updated = now
		if err := d.put(ctx, kv, StatusKey(d.Host, name), st); err != nil {
			return err
		}
		ks.reported, ks.stored = &st, true
	}
	return nil
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
