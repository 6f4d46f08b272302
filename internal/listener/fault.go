package listener

import (
	crand "crypto/rand"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/listenerd/listenerd/internal/events"
)

// Faults are toxiproxy's toxics on a listener's own connections: a fault
// acts on the byte path between the socket and the handler (a filter of
// each direction, see filter.go) or on the accept (fault_accept.go).
//
// A connection's draw for a fault is a number in [0, 1) fixed by the
// listener's random key, the connection's number and the fault's serial:
// drawn once, when the connection opens, by construction, and never again.
// The fault applies when the draw is below its probability, so adding,
// changing or removing another fault never changes it, and raising a
// probability only adds connections.
//
// The faults in force are one immutable set, replaced as a whole (under
// l.mu) on every change; the byte path reads it at every chunk, and its
// waits end when the set is replaced, so removing a fault resumes a
// connection at once with the bytes it held, none lost and none twice.
//
// A listener takes the fault path (no splice, no kernel echo) for the
// connections served after its first fault was set; connections served
// before it keep their fast path, where only reset and timeout's close can
// reach them.

// Fault is one fault of a listener; see events.Fault.
type Fault = events.Fault

// faultEntry is a fault in force.
type faultEntry struct {
	f      Fault
	id     uint64          // the listener's serial of the fault: part of every draw
	after  uint64          // NewOnly: connections numbered above this
	conns  map[uint64]bool // Conns, as this listener's connection numbers
	expiry *time.Timer
}

// faultSet is the faults in force.
type faultSet struct {
	faults  []*faultEntry
	changed chan struct{} // closed when the set is replaced
}

// faultState is a listener's faults.
type faultState struct {
	key     uint64 // random, set once: with a connection's number, its draws
	set     atomic.Pointer[faultSet]
	used    atomic.Bool   // a fault was set once: connections served from then on take the fault path
	applied atomic.Uint64 // faults applied to connections (accepts included)
	closes  atomic.Uint64 // connections a fault closed or reset
	next    uint64        // the last fault's serial; under l.mu
}

// load returns the faults in force.
func (s *faultState) load() *faultSet { return s.set.Load() }

func (s *faultState) init() {
	var b [8]byte
	_, _ = crand.Read(b[:])
	s.key = binary.LittleEndian.Uint64(b[:])
	s.set.Store(&faultSet{changed: make(chan struct{})})
}

// Faults returns the faults in force, oldest first.
func (l *Listener) Faults() []Fault {
	fs := l.faults.load()
	out := make([]Fault, len(fs.faults))
	for i, e := range fs.faults {
		out[i] = e.f
	}
	return out
}

// ValidateFault checks a fault; its errors name field (the fault's path in
// the request) and the parameter.
func ValidateFault(f Fault, field string) error {
	switch {
	case f.Name == "" || !nameRE.MatchString(f.Name):
		return Invalid(field+".name", "%q must be 1-63 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit", Clip(f.Name))
	case f.Kind == events.FaultUnspecified || f.Kind >= events.NumFaultKinds:
		return Invalid(field+".kind", "required: one of latency, bandwidth, slicer, slow_close, timeout, blackhole, reset, limit_data, refuse, delay_accept")
	case f.Direction > events.FaultOut:
		return Invalid(field+".direction", "unknown direction %d", f.Direction)
	case !(f.Probability >= 0 && f.Probability <= 1):
		return Invalid(field+".probability", "%v is not in 0-1", f.Probability)
	case f.Latency < 0 || f.Jitter < 0:
		return Invalid(field+".latency", "must not be negative")
	case f.Delay < 0:
		return Invalid(field+".delay", "must not be negative")
	case f.Rate < 0 || f.Burst < 0:
		return Invalid(field+".rate", "must not be negative")
	case f.Bytes < 0:
		return Invalid(field+".bytes", "must not be negative")
	case f.SliceSize < 0 || f.SliceVariation < 0:
		return Invalid(field+".slice_size", "must not be negative")
	case f.Kind.AcceptSide() && (f.NewOnly || len(f.Conns) > 0):
		return Invalid(field+".scope", "%s acts on new connections before they have ids: scope it by source only", f.Kind)
	}
	switch f.Kind {
	case events.FaultLatency:
		if f.Latency == 0 && f.Jitter == 0 {
			return Invalid(field+".latency", "required for latency")
		}
	case events.FaultBandwidth:
		if f.Rate == 0 {
			return Invalid(field+".rate", "required for bandwidth (bytes a second)")
		}
	case events.FaultSlicer:
		if f.SliceSize == 0 {
			return Invalid(field+".slice_size", "required for slicer")
		}
	case events.FaultSlowClose, events.FaultDelayAccept:
		if f.Delay == 0 {
			return Invalid(field+".delay", "required for %s", f.Kind)
		}
	case events.FaultLimitData:
		if f.Bytes == 0 {
			return Invalid(field+".bytes", "required for limit_data")
		}
	}
	for i, id := range f.Conns {
		if _, _, ok := events.ParseConnID(id); !ok {
			return Invalid(fmt.Sprintf("%s.scope.connection_ids[%d]", field, i), "%q is not a connection id", Clip(id))
		}
	}
	return nil
}

// setFaultsLocked replaces the set with faults; l.mu must be held.
func (l *Listener) setFaultsLocked(faults []*faultEntry) {
	old := l.faults.load()
	next := &faultSet{faults: faults, changed: make(chan struct{})}
	if len(faults) > 0 {
		l.faults.used.Store(true)
	}
	l.faults.set.Store(next)
	close(old.changed)
}

// newEntryLocked makes f's entry, with a new serial unless it replaces
// one (id != 0); l.mu must be held.
func (l *Listener) newEntryLocked(f Fault, id uint64) *faultEntry {
	if id == 0 {
		l.faults.next++
		id = l.faults.next
	}
	e := &faultEntry{f: f, id: id, after: l.nextConn}
	if len(f.Conns) > 0 {
		e.conns = map[uint64]bool{}
		for _, c := range f.Conns {
			if lid, n, ok := events.ParseConnID(c); ok && lid == l.id {
				e.conns[n] = true
			}
		}
	}
	if !f.Expires.IsZero() {
		e.expiry = time.AfterFunc(time.Until(f.Expires), func() { l.expireFault(e) })
	}
	return e
}

// addFault puts f in force, checked already; ErrAlreadyExists when its
// name is taken.
func (l *Listener) addFault(f Fault) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing() {
		return fmt.Errorf("listener %s: %w", l.id, ErrNotListening)
	}
	fs := l.faults.load()
	if slices.ContainsFunc(fs.faults, func(e *faultEntry) bool { return e.f.Name == f.Name }) {
		return fmt.Errorf("fault %q of listener %s: %w", f.Name, l.id, ErrAlreadyExists)
	}
	e := l.newEntryLocked(f, 0)
	l.setFaultsLocked(append(slices.Clip(fs.faults), e))
	l.bus.Publish(events.Event{Listener: l.id, Kind: events.KindFaultAdded, Detail: &events.Detail{Fault: &events.FaultEvent{Fault: f}}})
	l.applyToLiveLocked(e)
	return nil
}

// updateFault replaces the fault named f.Name, keeping its serial, so
// every connection keeps its draw, and its NewOnly boundary.
func (l *Listener) updateFault(f Fault) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	fs := l.faults.load()
	i := slices.IndexFunc(fs.faults, func(e *faultEntry) bool { return e.f.Name == f.Name })
	if i < 0 {
		return fmt.Errorf("fault %q of listener %s: %w", f.Name, l.id, ErrNotFound)
	}
	old := fs.faults[i]
	if old.expiry != nil {
		old.expiry.Stop()
	}
	e := l.newEntryLocked(f, old.id)
	e.after = old.after
	next := slices.Clone(fs.faults)
	next[i] = e
	l.setFaultsLocked(next)
	l.bus.Publish(events.Event{Listener: l.id, Kind: events.KindFaultAdded, Detail: &events.Detail{Fault: &events.FaultEvent{Fault: f}}})
	for _, c := range l.conns { // the changed fault applies anew (its timers too), on the same draws
		if fc := c.fc.Load(); fc != nil {
			fc.mu.Lock()
			delete(fc.applied, e.id)
			fc.mu.Unlock()
		}
	}
	l.applyToLiveLocked(e)
	return nil
}

// removeFault takes the fault named name out of force.
func (l *Listener) removeFault(name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.removeFaultLocked(func(e *faultEntry) bool { return e.f.Name == name }, false) {
		return fmt.Errorf("fault %q of listener %s: %w", name, l.id, ErrNotFound)
	}
	return nil
}

func (l *Listener) expireFault(e *faultEntry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.removeFaultLocked(func(x *faultEntry) bool { return x == e }, true)
}

func (l *Listener) removeFaultLocked(match func(*faultEntry) bool, expired bool) bool {
	fs := l.faults.load()
	i := slices.IndexFunc(fs.faults, match)
	if i < 0 {
		return false
	}
	e := fs.faults[i]
	if e.expiry != nil {
		e.expiry.Stop()
	}
	l.setFaultsLocked(slices.Delete(slices.Clone(fs.faults), i, i+1))
	l.bus.Publish(events.Event{Listener: l.id, Kind: events.KindFaultRemoved,
		Detail: &events.Detail{Fault: &events.FaultEvent{Fault: Fault{Name: e.f.Name, Kind: e.f.Kind}, Expired: expired}}})
	return true
}

// stopFaults stops the expiry timers when the listener closes.
func (l *Listener) stopFaults() {
	for _, e := range l.faults.load().faults {
		if e.expiry != nil {
			e.expiry.Stop()
		}
	}
}

// applyToLiveLocked applies a fault just set to the served connections it
// picks; l.mu must be held.
func (l *Listener) applyToLiveLocked(e *faultEntry) {
	if e.f.Kind.AcceptSide() {
		return
	}
	for _, c := range l.conns {
		c.faultConn().apply(e)
	}
}

// draw is connection n's draw for the fault of serial id, in [0, 1).
func (l *Listener) draw(n, id uint64) float64 {
	x := splitmix(splitmix(l.faults.key^n) ^ id)
	return float64(x>>11) / (1 << 53)
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// picks reports whether fault e applies to connection c: its scope and
// the connection's draw.
func (l *Listener) picks(e *faultEntry, c *Conn) bool {
	if e.f.NewOnly && c.n <= e.after {
		return false
	}
	if e.conns != nil && !e.conns[c.n] {
		return false
	}
	if len(e.f.Sources) > 0 && !inPrefixes(e.f.Sources, c.tuple.Remote.Addr()) {
		return false
	}
	return l.draw(c.n, e.id) < e.f.Probability
}

func inPrefixes(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// faultConn is a connection's side of its listener's faults: what each
// direction has passed, the faults applied, their timers.
type faultConn struct {
	c        *Conn
	kill     <-chan struct{}
	filtered atomic.Bool // its byte path goes through the fault stages
	// socketOnly: the daemon may never see its bytes (a stream listener's
	// connection until a handler takes it through the API, and for good
	// once handed over): only a reset by its timer can act on it.
	socketOnly atomic.Bool
	limited    atomic.Bool // a limit_data fault ended it: nothing more passes
	name       atomic.Pointer[string]

	mu      sync.Mutex
	applied map[uint64]bool        // fault serials applied (fault_applied sent)
	timers  map[uint64]*time.Timer // reset and timeout closes, by fault serial
	done    bool
	dirs    [2]dirState // in, out
}

// dirState is what one direction of a connection has passed.
type dirState struct {
	passed  int64
	buckets map[uint64]*bucket // bandwidth, by fault serial
}

// faultConn returns c's, made at first use.
func (c *Conn) faultConn() *faultConn {
	if fc := c.fc.Load(); fc != nil {
		return fc
	}
	fc := &faultConn{c: c, kill: c.killed(), applied: map[uint64]bool{}}
	if c.fc.CompareAndSwap(nil, fc) {
		return fc
	}
	return c.fc.Load()
}

// faultFilters returns the filters of a connection about to be served: the
// listener's own, and the fault stages once the listener has had a fault.
func (c *Conn) faultFilters(base *Filters) *Filters {
	l := c.l
	if !l.faults.used.Load() {
		return base
	}
	fc := c.faultConn()
	if _, ok := l.handler.(*streamHub); ok {
		fc.socketOnly.Store(true) // until taken through the API: see streamHub.Serve
	} else {
		fc.filtered.Store(true)
	}
	f := &Filters{
		In:  []Filter{fc.filter(events.FaultIn)},
		Out: []Filter{},
	}
	if base != nil {
		f.In = append(f.In, base.In...)
		f.Out = append(f.Out, base.Out...)
	}
	f.Out = append(f.Out, fc.filter(events.FaultOut))
	for _, e := range l.faults.load().faults {
		fc.apply(e)
	}
	return f
}

// may says whether fault e can act on the connection as it is served: any
// fault on the fault path; on a socket the daemon does not read (see
// socketOnly) a reset by its timer (at once or after delay); on a
// connection served on its fast path, before the listener's first fault,
// reset and timeout, which close it.
func (fc *faultConn) may(e *faultEntry) bool {
	k := e.f.Kind
	switch {
	case k.AcceptSide():
		return false
	case fc.filtered.Load():
		return true
	case fc.socketOnly.Load():
		return k == events.FaultReset && (e.f.Bytes == 0 || e.f.Delay > 0)
	default:
		return k == events.FaultReset || k == events.FaultTimeout
	}
}

// served puts a stream connection, taken through the API, on the fault
// path: every fault that picks it applies from now on.
func (fc *faultConn) served() {
	fc.filtered.Store(true)
	for _, e := range fc.c.l.faults.load().faults {
		fc.apply(e)
	}
}

// apply records fault e on the connection when it picks it and can act on
// it: the fault_applied event, once, and the timers of reset and timeout.
func (fc *faultConn) apply(e *faultEntry) {
	c, l := fc.c, fc.c.l
	if !fc.may(e) || !l.picks(e, c) {
		return
	}
	fc.mu.Lock()
	if fc.done || fc.applied[e.id] {
		fc.mu.Unlock()
		return
	}
	fc.applied[e.id] = true
	if t := fc.timers[e.id]; t != nil { // armed by the fault before a change
		t.Stop()
		delete(fc.timers, e.id)
	}
	kind := e.f.Kind
	if kind == events.FaultReset && (e.f.Bytes == 0 || e.f.Delay > 0) || kind == events.FaultTimeout && e.f.Delay > 0 {
		if fc.timers == nil {
			fc.timers = map[uint64]*time.Timer{}
		}
		fc.timers[e.id] = time.AfterFunc(e.f.Delay, func() { fc.fire(e.id, kind) })
	}
	fc.mu.Unlock()
	l.faults.applied.Add(1)
	l.bus.Publish(events.Event{Listener: l.id, Kind: events.KindFaultApplied, Conn: c.n, Tuple: c.tuple,
		Detail: &events.Detail{Fault: &events.FaultEvent{Fault: Fault{Name: e.f.Name, Kind: e.f.Kind}, Draw: l.draw(c.n, e.id)}}})
}

// fire closes the connection for the fault of serial id, if it is still in
// force as that kind: with an RST (reset) or a FIN (timeout).
func (fc *faultConn) fire(id uint64, kind events.FaultKind) {
	for _, e := range fc.c.l.faults.load().faults {
		if e.id == id && e.f.Kind == kind {
			fc.closeBy(e.f.Name, kind == events.FaultReset)
			return
		}
	}
}

// closeBy closes the connection for the fault named name.
func (fc *faultConn) closeBy(name string, reset bool) {
	fc.name.CompareAndSwap(nil, &name)
	fc.c.close(events.CloseFault, reset)
}

// end stops the connection's fault timers; it runs as the connection ends.
func (fc *faultConn) end() {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.done = true
	for _, t := range fc.timers {
		t.Stop()
	}
	fc.timers = nil
}

// faultDetail adds the fault that closed c, if one did, to a closed
// event's detail.
func (c *Conn) faultDetail(d *events.Detail) *events.Detail {
	fc := c.fc.Load()
	if fc == nil {
		return d
	}
	fc.end()
	name := fc.name.Load()
	if name == nil || events.CloseReason(c.reason.Load()) != events.CloseFault {
		return d
	}
	if d == nil {
		d = &events.Detail{}
	}
	c.l.faults.closes.Add(1)
	d.Fault = &events.FaultEvent{Fault: Fault{Name: *name}}
	return d
}

// FaultCounts are a listener's fault counters.
type FaultCounts struct {
	InForce uint64 // faults in force now
	Applied uint64 // times a fault applied to a connection (refusals and delayed accepts included)
	Closes  uint64 // connections a fault closed or reset
}

func (l *Listener) faultCounts() FaultCounts {
	return FaultCounts{InForce: uint64(len(l.faults.load().faults)), Applied: l.faults.applied.Load(), Closes: l.faults.closes.Load()}
}

// ConnFault is a connection's draw for one fault in force.
type ConnFault struct {
	Fault   string
	Draw    float64
	Applies bool // the draw is below the probability and the scope holds
}

// connFaults lists c's draws for the faults in force.
func (l *Listener) connFaults(fs *faultSet, c *Conn) []ConnFault {
	if len(fs.faults) == 0 {
		return nil
	}
	fc := c.fc.Load()
	out := make([]ConnFault, 0, len(fs.faults))
	for _, e := range fs.faults {
		if e.f.Kind.AcceptSide() {
			continue
		}
		out = append(out, ConnFault{Fault: e.f.Name, Draw: l.draw(c.n, e.id), Applies: l.picks(e, c) && (fc == nil || fc.may(e))})
	}
	return out
}

// The byte path.

// filter returns the fault stage of direction dir.
func (fc *faultConn) filter(dir events.FaultDirection) Filter {
	return func(next Stage) Stage { return &faultStage{fc: fc, dir: dir, next: next} }
}

// faultStage applies the faults in force to one direction of a connection.
type faultStage struct {
	fc   *faultConn
	dir  events.FaultDirection
	next Stage
}

// plan is what the faults in force ask of a chunk.
type plan struct {
	hold      bool          // timeout: pass nothing
	drop      bool          // blackhole
	latency   time.Duration // summed, drawn once a chunk
	slice     int           // 0: no slicing
	sliceWait time.Duration
	limit     int64         // bytes that may still pass before a limit or reset; -1: none
	limitBy   *faultEntry   // what ends it at limit
	closeWait time.Duration // slow_close
	buckets   []*bucket
}

func (s *faultStage) state() *dirState { return &s.fc.dirs[s.dir-1] }

// planFor reads the faults in force for this direction. lat holds the
// latency drawn for the chunk so far, by fault serial.
func (s *faultStage) planFor(fs *faultSet, lat map[uint64]time.Duration) plan {
	c, l := s.fc.c, s.fc.c.l
	p := plan{limit: -1}
	st := s.state()
	for _, e := range fs.faults {
		f := &e.f
		if f.Kind.AcceptSide() || f.Direction != events.FaultBoth && f.Direction != s.dir || !l.picks(e, c) {
			continue
		}
		switch f.Kind {
		case events.FaultLatency:
			d, ok := lat[e.id]
			if !ok {
				d = f.Latency
				if f.Jitter > 0 {
					d += time.Duration(rand.Int64N(int64(2*f.Jitter)+1)) - f.Jitter
				}
				d = max(d, 0)
				lat[e.id] = d
			}
			p.latency += d
		case events.FaultBandwidth:
			p.buckets = append(p.buckets, st.bucket(e))
		case events.FaultSlicer:
			n := f.SliceSize
			if f.SliceVariation > 0 {
				n += rand.IntN(2*f.SliceVariation+1) - f.SliceVariation
			}
			p.slice = max(n, 1)
			p.sliceWait = f.Delay
		case events.FaultSlowClose:
			p.closeWait = max(p.closeWait, f.Delay)
		case events.FaultTimeout:
			p.hold = true
		case events.FaultBlackhole:
			p.drop = true
		case events.FaultLimitData:
			if left := max(f.Bytes-st.passed, 0); p.limit < 0 || left < p.limit {
				p.limit, p.limitBy = left, e
			}
		case events.FaultReset:
			if f.Bytes > 0 && f.Delay == 0 {
				if left := max(f.Bytes-st.passed, 0); p.limit < 0 || left < p.limit {
					p.limit, p.limitBy = left, e
				}
			}
		}
	}
	return p
}

// wait waits d, or until the fault set changes (true) or the connection is
// closed (an error).
func (s *faultStage) wait(d time.Duration, changed <-chan struct{}) (bool, error) {
	if d <= 0 {
		return false, nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return false, nil
	case <-changed:
		return true, nil
	case <-s.fc.kill:
		return false, net.ErrClosed
	}
}

// reached ends the connection at a limit_data or reset-after-bytes fault.
func (s *faultStage) reached(e *faultEntry) error {
	if e.f.Kind == events.FaultReset {
		s.fc.closeBy(e.f.Name, true)
		return errFaultEnded
	}
	// limit_data: the client gets a FIN after exactly the bytes passed;
	// what it still sends is read and dropped until it ends its side, so
	// that the close is a FIN and no RST takes the bytes from it unread.
	fc := s.fc
	if !fc.limited.Swap(true) {
		fc.name.CompareAndSwap(nil, &e.f.Name)
		fc.c.reason.CompareAndSwap(0, uint32(events.CloseFault))
		if s.dir == events.FaultIn {
			_ = s.next.CloseWrite()
		}
		_ = fc.c.c.CloseWrite()
	}
	return nil
}

// errFaultEnded is what the byte path returns once a fault ended the
// connection.
var errFaultEnded = fmt.Errorf("ended by a fault")

func (s *faultStage) Write(p []byte) (int, error) {
	start := time.Now()
	var lat map[uint64]time.Duration
	done := 0
	for done < len(p) {
		if s.fc.limited.Load() {
			return len(p), nil // dropped after limit_data
		}
		fs := s.fc.c.l.faults.load()
		if lat == nil {
			lat = map[uint64]time.Duration{}
		}
		pl := s.planFor(fs, lat)
		if pl.hold {
			if _, err := s.wait(math.MaxInt64, fs.changed); err != nil {
				return done, err
			}
			continue
		}
		if pl.drop {
			return len(p), nil
		}
		if changed, err := s.wait(time.Until(start.Add(pl.latency)), fs.changed); err != nil {
			return done, err
		} else if changed {
			continue
		}
		n := len(p) - done
		if pl.slice > 0 {
			n = min(n, pl.slice)
		}
		if pl.limit >= 0 {
			if pl.limit == 0 {
				if err := s.reached(pl.limitBy); err != nil {
					return done, err
				}
				continue
			}
			n = int(min(int64(n), pl.limit))
		}
		waited := false
		for _, b := range pl.buckets {
			n = min(n, b.burst())
		}
		for _, b := range pl.buckets {
			changed, err := b.take(s, n, fs.changed)
			if err != nil {
				return done, err
			}
			if changed {
				waited = true
				break
			}
		}
		if waited {
			continue
		}
		w, err := s.next.Write(p[done : done+n])
		done += w
		s.fc.mu.Lock()
		s.state().passed += int64(w)
		s.fc.mu.Unlock()
		if err != nil {
			return done, err
		}
		if pl.limit >= 0 && int64(w) == pl.limit {
			if err := s.reached(pl.limitBy); err != nil {
				return done, err
			}
		}
		if pl.slice > 0 && done < len(p) {
			if _, err := s.wait(pl.sliceWait, fs.changed); err != nil {
				return done, err
			}
		}
	}
	return done, nil
}

// CloseWrite passes the half-close on, in order after the bytes: held by
// timeout, delayed by latency and slow_close.
func (s *faultStage) CloseWrite() error {
	start := time.Now()
	lat := map[uint64]time.Duration{}
	for {
		if s.fc.limited.Load() {
			return errFaultEnded
		}
		fs := s.fc.c.l.faults.load()
		pl := s.planFor(fs, lat)
		if pl.hold {
			if _, err := s.wait(math.MaxInt64, fs.changed); err != nil {
				return err
			}
			continue
		}
		changed, err := s.wait(time.Until(start.Add(pl.latency+pl.closeWait)), fs.changed)
		if err != nil {
			return err
		}
		if !changed {
			return s.next.CloseWrite()
		}
	}
}

// bucket is a bandwidth fault's token bucket on one direction of one
// connection.
type bucket struct {
	mu     sync.Mutex
	rate   float64 // bytes a second
	depth  int64
	tokens float64
	last   time.Time
}

// bucket returns the bucket of fault e on this direction, made full at
// first use and following the fault's rate and burst.
func (st *dirState) bucket(e *faultEntry) *bucket {
	if st.buckets == nil {
		st.buckets = map[uint64]*bucket{}
	}
	depth := e.f.Burst
	if depth <= 0 {
		depth = max(e.f.Rate/50, 1)
	}
	b := st.buckets[e.id]
	if b == nil {
		b = &bucket{tokens: float64(depth), last: time.Now()}
		st.buckets[e.id] = b
	}
	b.mu.Lock()
	b.rate, b.depth = float64(e.f.Rate), depth
	b.mu.Unlock()
	return b
}

// burst is the most one write takes at once: a quarter of the depth, so
// that the bytes go out in steps of 5 ms at the default depth, smooth at
// any window of 100 ms.
func (b *bucket) burst() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return int(min(max(b.depth/4, 1), math.MaxInt32))
}

// take takes n tokens, going into debt, and waits until the debt is paid;
// it gives the tokens back and gives up (true) when the fault set changes
// first. A wake-up that comes late finds the tokens of its lateness in the
// bucket (up to its depth), so the rate holds on a busy machine.
func (b *bucket) take(s *faultStage, n int, changed <-chan struct{}) (bool, error) {
	b.mu.Lock()
	now := time.Now()
	b.tokens = min(b.tokens+now.Sub(b.last).Seconds()*b.rate, float64(b.depth))
	b.last = now
	b.tokens -= float64(n)
	need := time.Duration(-b.tokens / b.rate * float64(time.Second))
	b.mu.Unlock()
	if need <= 0 {
		return false, nil
	}
	ch, err := s.wait(need, changed)
	if ch || err != nil {
		b.mu.Lock()
		b.tokens += float64(n)
		b.mu.Unlock()
	}
	return ch, err
}

// validateFaults checks a spec's faults: each valid, names unique.
func validateFaults(fs []Fault) error {
	seen := map[string]bool{}
	for i, f := range fs {
		field := fmt.Sprintf("spec.faults[%d]", i)
		if err := ValidateFault(f, field); err != nil {
			return err
		}
		if seen[f.Name] {
			return Invalid(field+".name", "%q is given twice", f.Name)
		}
		seen[f.Name] = true
	}
	return nil
}

// specFaults puts a new listener's spec faults in force, each with its
// fault_added event after listener_started, before its first accept.
func (l *Listener) specFaults(fs []Fault) {
	if len(fs) == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	entries := make([]*faultEntry, 0, len(fs))
	for _, f := range fs {
		entries = append(entries, l.newEntryLocked(f, 0))
		l.bus.Publish(events.Event{Listener: l.id, Kind: events.KindFaultAdded, Detail: &events.Detail{Fault: &events.FaultEvent{Fault: f}}})
	}
	l.setFaultsLocked(entries)
}

// AddFault puts a fault in force on a listener: on the connections it
// picks among those open (reset and timeout on any; the byte kinds on
// those on the fault path) and on those opened from now on.
func (m *Manager) AddFault(ref string, f Fault) error {
	if err := ValidateFault(f, "fault"); err != nil {
		return err
	}
	l, err := m.getToChange(ref)
	if err != nil {
		return err
	}
	return l.addFault(f)
}

// UpdateFault replaces a listener's fault of the same name, keeping every
// connection's draw for it.
func (m *Manager) UpdateFault(ref string, f Fault) error {
	if err := ValidateFault(f, "fault"); err != nil {
		return err
	}
	l, err := m.getToChange(ref)
	if err != nil {
		return err
	}
	return l.updateFault(f)
}

// RemoveFault takes a listener's fault out of force; connections it held
// go on with what it held.
func (m *Manager) RemoveFault(ref, name string) error {
	l, err := m.getToChange(ref)
	if err != nil {
		return err
	}
	return l.removeFault(name)
}

// Faults lists a listener's faults in force.
func (m *Manager) Faults(ref string) ([]Fault, error) {
	l, err := m.Get(ref)
	if err != nil {
		return nil, err
	}
	return l.Faults(), nil
}
