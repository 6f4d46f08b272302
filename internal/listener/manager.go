package listener

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/listenerd/listenerd/internal/events"
)

// DefaultDrainTimeout is how long a closing listener's connections may
// drain when the caller does not say.
const DefaultDrainTimeout = 30 * time.Second

// Manager owns every listener of the daemon: it creates, finds, changes and
// closes them, and owns the goroutines that drain closing ones.
type Manager struct {
	bus          *events.Bus
	log          *slog.Logger
	saver        *saver // nil without a persister
	maxListeners int
	maxConns     int64        // daemon-wide open connections; 0: unlimited
	policy       Policy       // what listeners may bind; checked before every bind
	totalConns   atomic.Int64 // open connections across listeners
	fdLimit      int64        // Options.FDLimit
	fdReserve    int64        // Options.FDReserve
	fds          atomic.Int64 // descriptors held by listeners and connections (takeFDs)
	handlers     handlerTable
	onConnClosed func(listener string, d time.Duration)
	onQueueLeft  func(listener string, wait time.Duration)
	onBound      func(id string, ln *net.TCPListener)
	onClosed     func(id string)

	// Handover: the side connections' listener and those open, the
	// secrets of attachments not connected yet, and their goroutines.
	handoverLn *net.UnixListener
	sides      map[*sideConn]bool
	secrets    map[string]*Attachment
	sideWG     sync.WaitGroup

	attached map[string]*Attachment // stream handlers by id, for ready takes; guarded by mu

	mu       sync.Mutex
	byID     map[string]*Listener
	byName   map[string]*Listener
	shutting bool           // Shutdown has begun: nothing new binds, nothing more is saved
	wg       sync.WaitGroup // accept loops and drains
}

// Options configure a Manager. Zero values mean no persistence and no
// daemon-wide caps.
type Options struct {
	Persister      Persister // saves desired state on every change
	MaxListeners   int       // listeners at once; beyond, Create fails with ErrLimit
	MaxConnections int64     // open connections across all listeners; beyond, rejected
	Policy         Policy    // ports and hosts listeners may bind; beyond, ErrPermission
	// Handlers are the handlers listeners may name; nil means Builtin().
	Handlers []HandlerKind
	// ConnClosed, when set, is called as each connection ends, after its
	// closed event, on the connection's goroutine, with how long it was
	// open (for metrics). It must not block.
	ConnClosed func(listener string, d time.Duration)
	// QueueLeft, when set, is called as each queued connection leaves the
	// queue (served or rejected) with how long it waited. It must not
	// block.
	QueueLeft func(listener string, wait time.Duration)

	// FDLimit is the daemon's open-file limit, of which FDReserve are kept
	// for what is not a listener's (the API, the state file, logs): the
	// listeners' sockets, their connections, forward's upstreams and the
	// splice pipes take the rest, and beyond it a connection is rejected
	// (DAEMON_LIMIT), a listener is not created (ErrLimit) and an
	// upstream is not dialled. 0: no such budget.
	FDLimit, FDReserve int64

	// Bound, when set, is called with each listening socket a listener
	// binds (or restores on a socket passed in), under the manager's lock;
	// Closed with the id of each listener a Close ends. The server keeps
	// the sockets in systemd's descriptor store with them (FDSTORE=1). They
	// must not block.
	Bound  func(id string, ln *net.TCPListener)
	Closed func(id string)
}

// Descriptors a listener holds: its socket, and the one its accept loop
// may hold a moment for a connection it rejects.
const listenerFDs = 2

// NewManager returns a manager that reports to bus.
func NewManager(bus *events.Bus, log *slog.Logger, opts Options) *Manager {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{bus: bus, log: log, maxListeners: opts.MaxListeners,
		maxConns: opts.MaxConnections, policy: opts.Policy, handlers: newHandlerTable(opts.Handlers),
		onConnClosed: opts.ConnClosed, onQueueLeft: opts.QueueLeft, onBound: opts.Bound, onClosed: opts.Closed, fdLimit: opts.FDLimit, fdReserve: opts.FDReserve,
		byID: map[string]*Listener{}, byName: map[string]*Listener{},
		sides: map[*sideConn]bool{}, secrets: map[string]*Attachment{}, attached: map[string]*Attachment{}}
	if opts.Persister != nil {
		m.saver = newSaver(opts.Persister, m.snapshot)
	}
	return m
}

// Bus returns the manager's event bus.
func (m *Manager) Bus() *events.Bus { return m.bus }

func newID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "ln-" + hex.EncodeToString(b[:])
}

// Create binds a new listener and starts accepting. When it returns
// without error the port is open and, with a persister, the listener is
// saved; nothing is left behind when it fails. The listener is listed
// (and accepts) from the moment it is bound, while its save is in flight.
func (m *Manager) Create(ctx context.Context, name string, spec Spec) (*Listener, error) {
	return m.create(ctx, name, spec, false)
}

// create is Create; declared marks the listener the declared listeners'
// (declared.go) before it is saved.
func (m *Manager) create(ctx context.Context, name string, spec Spec, declared bool) (*Listener, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	h, err := m.handlers.validateSpec(spec)
	if err != nil {
		return nil, err
	}
	ip, err := resolveHost(ctx, spec.Host) // a slow resolver must not hold m.mu
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	l, err := m.createLocked(ctx, name, spec, h, ip)
	var v uint64
	if err == nil {
		l.declared.Store(declared)
		v, err = m.stageLocked()
	}
	m.mu.Unlock()
	if l == nil {
		return nil, err
	}
	if err == nil {
		err = m.commit(v)
	}
	if err != nil {
		m.unwind(l)
		return nil, err
	}
	return l, nil
}

func (m *Manager) createLocked(ctx context.Context, name string, spec Spec, h Handler, ip netip.Addr) (*Listener, error) {
	if m.shutting {
		return nil, ErrShuttingDown
	}
	if name != "" && m.byName[name] != nil {
		return nil, fmt.Errorf("listener name %q: %w", name, ErrAlreadyExists)
	}
	if m.maxListeners > 0 && m.countLocked() >= m.maxListeners {
		return nil, fmt.Errorf("%w: at most %d %s", ErrLimit, m.maxListeners, plural(m.maxListeners, "listener"))
	}
	id := newID()
	for m.byID[id] != nil {
		id = newID()
	}
	return m.bindLocked(ctx, id, name, spec, h, ip, 0, time.Now())
}

// unwind takes back a listener whose save failed: it is closed at once
// (unless someone closed it first, as it was listed while its save was in
// flight: that close owns its drain), and a snapshot without it is saved,
// so that a save of a newer snapshot that still held it (another
// change's) does not outlive the failure. That save is best effort: when
// the disk still fails, the error is logged and the next save that
// succeeds writes the state without it.
func (m *Manager) unwind(l *Listener) {
	m.startDrain(l, 0, events.CloseListenerClosed)
	if err := m.save(); err != nil {
		m.log.Error("state not saved after a failed create was undone; the next save that succeeds will drop it",
			"listener", l.id, "err", err)
	}
}

// reserve counts a connection against the daemon-wide cap and the
// descriptor budget. It returns RejectDaemonLimit, or RejectUnspecified
// when counted.
func (m *Manager) reserve() events.RejectReason {
	if !m.takeFDs(1) {
		return events.RejectDaemonLimit
	}
	if n := m.totalConns.Add(1); m.maxConns > 0 && n > m.maxConns {
		m.totalConns.Add(-1)
		m.giveFDs(1)
		return events.RejectDaemonLimit
	}
	return events.RejectUnspecified
}

// release uncounts a connection reserved with reserve.
func (m *Manager) release() {
	m.totalConns.Add(-1)
	m.giveFDs(1)
}

// takeFDs counts n descriptors against the budget (Options.FDLimit less
// Options.FDReserve). It reports false, having counted nothing, when they
// do not fit.
func (m *Manager) takeFDs(n int64) bool {
	if held := m.fds.Add(n); m.fdLimit > 0 && held > m.fdLimit-m.fdReserve {
		m.fds.Add(-n)
		return false
	}
	return true
}

// giveFDs uncounts descriptors counted by takeFDs.
func (m *Manager) giveFDs(n int64) { m.fds.Add(-n) }

// Caps are the daemon-wide caps and what is held against them.
type Caps struct {
	// MaxConnections is the cap on open and queued connections: the one
	// asked for, or the descriptor budget; 0: unlimited.
	MaxConnections int64
	Connections    int64 // open or queued now
	// FDLimit and FDReserve are Options'; FDHeld are the descriptors
	// listeners and connections hold now.
	FDLimit, FDReserve, FDHeld int64
}

// Caps returns the daemon-wide caps and what is held against them.
func (m *Manager) Caps() Caps {
	c := Caps{MaxConnections: m.maxConns, Connections: m.totalConns.Load(),
		FDLimit: m.fdLimit, FDReserve: m.fdReserve, FDHeld: m.fds.Load()}
	if c.MaxConnections <= 0 && m.fdLimit > 0 {
		c.MaxConnections = m.fdLimit - m.fdReserve
	}
	return c
}

// errDescriptors is the error of a listener the budget has no room for.
func (m *Manager) errDescriptors() error {
	return fmt.Errorf("%w: out of file descriptors: of the daemon's open-file limit (RLIMIT_NOFILE) of %d, %d are kept for its API, and listeners and connections hold the other %d; close some, or raise the limit",
		ErrLimit, m.fdLimit, m.fdReserve, m.fdLimit-m.fdReserve)
}

func (m *Manager) connClosed(listener string, d time.Duration) {
	if m.onConnClosed != nil {
		m.onConnClosed(listener, d)
	}
}

func (m *Manager) queueLeft(listener string, wait time.Duration) {
	if m.onQueueLeft != nil {
		m.onQueueLeft(listener, wait)
	}
}

// countLocked counts the listeners that are not closing; m.mu must be held.
func (m *Manager) countLocked() int {
	n := 0
	for _, l := range m.byID {
		if !l.closing() {
			n++
		}
	}
	return n
}

func (m *Manager) newListener(id, name string, spec Spec, h Handler, ln *net.TCPListener, created time.Time) *Listener {
	l := &Listener{
		id: id, name: name, spec: spec, handler: h, created: created, bus: m.bus, ln: ln, host: m,
		conns:      map[uint64]*Conn{},
		allGone:    make(chan struct{}),
		slot:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
		acceptDone: make(chan struct{}),
		done:       make(chan struct{}),
	}
	l.perSource = map[netip.Addr]int64{}
	if b, ok := h.(interface{ bind(*Listener) }); ok { // a handler that needs its listener
		b.bind(l)
	}
	l.storeLimits(spec.Limits)
	l.faults.init()
	l.state.Store(int32(StateListening))
	if ln != nil {
		l.bound = ln.Addr().String()
		l.boundPort = uint16(ln.Addr().(*net.TCPAddr).Port)
	}
	l.log = m.log.With("listener", id, "addr", l.bound)
	return l
}

// Get finds a listener by id or name.
func (m *Manager) Get(ref string) (*Listener, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.getLocked(ref)
}

// getToChange finds a listener for a change. Once Shutdown has begun no
// change is taken: the state saved before it is what the next start
// restores.
func (m *Manager) getToChange(ref string) (*Listener, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.shutting {
		return nil, ErrShuttingDown
	}
	return m.getLocked(ref)
}

func (m *Manager) getLocked(ref string) (*Listener, error) {
	if l := m.byID[ref]; l != nil {
		return l, nil
	}
	if l := m.byName[ref]; l != nil {
		return l, nil
	}
	return nil, m.notFoundLocked(ref, "")
}

// notFoundLocked is the error for a ref that names no listener; m.mu must
// be held. A name given up by a listener still closing says so, with the
// id that still reaches it.
func (m *Manager) notFoundLocked(ref, why string) error {
	for _, l := range m.byID {
		if l.name == ref && ref != "" && m.byName[ref] != l {
			return fmt.Errorf("listener %q: %s is closing and gave its name up; use its id: %w", ref, l.id, ErrNotFound)
		}
	}
	return fmt.Errorf("listener %q: %s%w", ref, why, ErrNotFound)
}

// Resolve maps listener names to ids for event filters. An id, of a
// listener open or gone (its events may still be in the history), is kept
// as it is; a ref that is neither an id nor the name of an open listener
// is ErrNotFound, since no event could ever match it.
func (m *Manager) Resolve(refs []string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, len(refs))
	for i, r := range refs {
		switch l := m.byName[r]; {
		case m.byID[r] != nil || idLikeRE.MatchString(r):
			out[i] = r
		case l != nil:
			out[i] = l.id
		default:
			return nil, m.notFoundLocked(r, "no listener has this name, and it is not a listener id: ")
		}
	}
	return out, nil
}

// List returns every listener, oldest first, and the event sequence the
// snapshot reflects.
func (m *Manager) List() ([]Info, uint64) {
	m.mu.Lock()
	seq := m.bus.Head()
	ls := m.sortedLocked()
	m.mu.Unlock()
	out := make([]Info, len(ls))
	for i, l := range ls {
		out[i] = l.Info()
	}
	return out, seq
}

// sortedLocked returns the listeners oldest first; m.mu must be held.
func (m *Manager) sortedLocked() []*Listener {
	ls := slices.Collect(maps.Values(m.byID))
	slices.SortFunc(ls, func(a, b *Listener) int {
		if c := a.created.Compare(b.created); c != 0 {
			return c
		}
		return strings.Compare(a.id, b.id)
	})
	return ls
}

// SetLimits changes a listener's limits at runtime: fn gets the current
// limits and returns the new ones.
func (m *Manager) SetLimits(ref string, fn func(Limits) (Limits, error)) (Info, error) {
	l, err := m.getToChange(ref)
	if err != nil {
		return Info{}, err
	}
	if State(l.state.Load()) != StateListening {
		return Info{}, fmt.Errorf("listener %s is %s: %w", l.id, State(l.state.Load()), ErrNotListening)
	}
	m.mu.Lock()
	_, err = l.setLimits(fn)
	var v uint64
	var info Info
	if err == nil {
		info = l.Info() // this change's limits, whatever lands during the save
		v, err = m.stageLocked()
	}
	m.mu.Unlock()
	if err == nil {
		err = m.commit(v)
	}
	if err != nil {
		return Info{}, err
	}
	return info, nil
}

// Close stops a listener accepting at once (the port is free on return) and
// drains its connections for up to drain, then destroys them; force
// destroys them now. Closing a listener already draining with force
// destroys what is left.
func (m *Manager) Close(ref string, drain time.Duration, force bool) (Info, error) {
	l, err := m.getToChange(ref)
	if err != nil {
		return Info{}, err
	}
	began, info := m.closeListener(l, drain, force, events.CloseListenerClosed)
	if began && m.onClosed != nil {
		m.onClosed(l.id)
	}
	// A Rebind that raced this Close may have put a new listener under the
	// same id: the id is what was asked to close.
	m.mu.Lock()
	cur := m.byID[l.id]
	m.mu.Unlock()
	if cur != nil && cur != l {
		m.closeListener(cur, drain, force, events.CloseListenerClosed)
	}
	return info, m.save()
}

// closeListener closes l and reports whether it began the close (false:
// the listener was already closing, and its drain goes on). A drain of 0
// is force: also for a listener already draining, whose connections it
// destroys now. It also returns l as this close found it, before any
// connection was destroyed: its active count is what the close drains or
// destroys.
func (m *Manager) closeListener(l *Listener, drain time.Duration, force bool, reason events.CloseReason) (bool, Info) {
	if force || drain <= 0 {
		force, drain = true, 0
	}
	if began, info := m.startDrain(l, drain, reason); began {
		return true, info
	}
	info := l.Info()
	if force {
		l.killAll(reason)
	}
	return false, info
}

// startDrain begins closing l, if no one has, and reports whether this
// call began it, with l as it was once closed to new connections. The
// name is free for a new listener at once. The listener leaves the table
// once its last connection is gone: before startDrain returns when none
// is open (CLOSED, its listener_closed event published), else in a
// goroutine the manager waits for. m.mu must not be held.
func (m *Manager) startDrain(l *Listener, drain time.Duration, reason events.CloseReason) (bool, Info) {
	// Counted before the close begins, so that a Shutdown that finds the
	// listener closing already waits for its drain (WaitGroup: no Add
	// racing a Wait at zero).
	m.wg.Add(1)
	if !l.beginClose() {
		m.wg.Done()
		return false, Info{}
	}
	m.mu.Lock()
	m.freeNameLocked(l) // before listener_closed: a client may take the name on it
	m.mu.Unlock()
	l.mu.Lock()
	open := uint64(len(l.conns))
	l.mu.Unlock()
	l.log.Info("listener closing", "open", open, "drain", drain)
	if open == 0 {
		m.finishDrain(l, 0, reason, 0)
		return true, l.Info()
	}
	info := l.Info()
	go m.finishDrain(l, drain, reason, open)
	return true, info
}

// finishDrain drains l and drops it from the table, before its
// listener_closed event.
func (m *Manager) finishDrain(l *Listener, drain time.Duration, reason events.CloseReason, open uint64) {
	defer m.wg.Done()
	l.drain(drain, reason, open, func() {
		m.mu.Lock()
		if m.byID[l.id] == l {
			delete(m.byID, l.id)
		}
		m.mu.Unlock()
	})
}

// freeNameLocked gives l's name up; m.mu must be held.
func (m *Manager) freeNameLocked(l *Listener) {
	if l.name != "" && m.byName[l.name] == l {
		delete(m.byName, l.name)
	}
}

// Connections lists a listener's open connections.
func (m *Manager) Connections(ref string) ([]ConnInfo, uint64, error) {
	l, err := m.Get(ref)
	if err != nil {
		return nil, 0, err
	}
	conns, seq := l.Connections()
	return conns, seq, nil
}

// CloseConnection kicks one connection by its id.
func (m *Manager) CloseConnection(id string, reset bool) error {
	lid, n, ok := events.ParseConnID(id)
	if !ok {
		return Invalid("id", "%q is not a connection id (listener id, '.', number)", id)
	}
	l, err := m.Get(lid)
	if err == nil {
		err = l.closeConn(n, reset)
	}
	if err != nil {
		return fmt.Errorf("connection %q: %w", id, ErrNotFound)
	}
	return nil
}

// Shutdown closes every listener, lets connections drain for up to
// timeout, destroys the rest and waits for every goroutine it owns.
func (m *Manager) Shutdown(timeout time.Duration) {
	m.mu.Lock()
	m.shutting = true // listeners close for the shutdown, not for good: the saved state keeps them
	ls := slices.Collect(maps.Values(m.byID))
	m.mu.Unlock()
	var late []*Listener // closing before the shutdown, on their own drain timeout
	for _, l := range ls {
		if began, _ := m.closeListener(l, timeout, timeout <= 0, events.CloseDaemonShutdown); !began {
			late = append(late, l)
		}
	}
	defer m.endHandover() // once every listener has drained
	if len(late) == 0 || timeout <= 0 {
		m.wg.Wait()
		return
	}
	// The shutdown's timeout bounds their drains too.
	done := make(chan struct{})
	go func() {
		m.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		for _, l := range late {
			l.killAll(events.CloseDaemonShutdown)
		}
		<-done
	}
}

// plural is word, with an s unless n is 1.
func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
