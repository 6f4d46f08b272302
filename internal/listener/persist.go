package listener

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/listenerd/listenerd/internal/events"
)

// Persister saves the desired state: one JSON record a listener. Save must
// be atomic and durable when it returns.
type Persister interface {
	Save(records []json.RawMessage) error
}

// record is a listener's desired state as persisted.
type record struct {
	ID      string    `json:"id"`
	Name    string    `json:"name,omitempty"`
	Created time.Time `json:"create_time"`
	// BoundPort is the port last bound, so a listener created with port 0
	// gets the same port back after a restart when it is free.
	BoundPort uint16     `json:"bound_port,omitempty"`
	Spec      recordSpec `json:"spec"`
}

type recordSpec struct {
	Host           string         `json:"host,omitempty"`
	Port           uint16         `json:"port,omitempty"`
	Backlog        int            `json:"backlog,omitempty"`
	MaxConnections int64          `json:"max_connections"` // -1: unlimited
	OverflowWait   bool           `json:"overflow_backlog,omitempty"`
	IdleTimeout    time.Duration  `json:"idle_timeout_ns,omitempty"`
	MaxLifetime    time.Duration  `json:"max_lifetime_ns,omitempty"`
	AcceptRate     float64        `json:"accept_rate,omitempty"`
	AcceptBurst    int            `json:"accept_burst,omitempty"`
	PerSource      int64          `json:"max_connections_per_source,omitempty"` // 0: unlimited
	AllowHalfOpen  bool           `json:"allow_half_open,omitempty"`
	PauseOnConnect bool           `json:"pause_on_connect,omitempty"`
	Handler        string         `json:"handler"`
	Upstream       string         `json:"upstream,omitempty"`
	ConnectTimeout time.Duration  `json:"connect_timeout_ns,omitempty"`
	Allow          []netip.Prefix `json:"allow_cidrs,omitempty"`
	Deny           []netip.Prefix `json:"deny_cidrs,omitempty"`
	Nagle          bool           `json:"nagle,omitempty"`
	KeepAlive      time.Duration  `json:"keepalive_ns,omitempty"` // -1: off
}

func toRecord(l *Listener) record {
	s := l.spec
	lim := *l.limits.Load()
	r := record{ID: l.id, Name: l.name, Created: l.created, BoundPort: l.boundPort, Spec: recordSpec{
		Host: s.Host, Port: s.Port, Backlog: s.Backlog,
		MaxConnections: lim.MaxConnections, OverflowWait: lim.Backlog,
		IdleTimeout: lim.IdleTimeout, MaxLifetime: lim.MaxLifetime,
		AcceptRate: lim.AcceptRate, AcceptBurst: lim.AcceptBurst, PerSource: lim.PerSource,
		AllowHalfOpen: s.AllowHalfOpen, PauseOnConnect: s.PauseOnConnect,
		Handler: s.Handler.Kind.String(), Upstream: s.Handler.Upstream, ConnectTimeout: s.Handler.ConnectTimeout,
		Allow: s.Allow, Deny: s.Deny, Nagle: s.Nagle, KeepAlive: s.KeepAlive,
	}}
	return r
}

// fromRecord decodes a saved record. Its error means the record cannot be
// read at all (a corrupt state file); a spec that decodes but that the
// current checks refuse is not its concern: see Restore.
func fromRecord(raw json.RawMessage) (record, Spec, error) {
	var r record
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return r, Spec{}, err
	}
	if !idLikeRE.MatchString(r.ID) {
		return r, Spec{}, fmt.Errorf("bad listener id %q", r.ID)
	}
	rs := r.Spec
	s := Spec{
		Host: rs.Host, Port: rs.Port, Backlog: rs.Backlog,
		Limits: Limits{MaxConnections: rs.MaxConnections, Backlog: rs.OverflowWait,
			IdleTimeout: rs.IdleTimeout, MaxLifetime: rs.MaxLifetime,
			AcceptRate: rs.AcceptRate, AcceptBurst: rs.AcceptBurst, PerSource: rs.PerSource},
		AllowHalfOpen: rs.AllowHalfOpen, PauseOnConnect: rs.PauseOnConnect,
		Handler: Handler{Upstream: rs.Upstream, ConnectTimeout: rs.ConnectTimeout},
		Allow:   rs.Allow, Deny: rs.Deny, Nagle: rs.Nagle, KeepAlive: rs.KeepAlive,
	}
	switch rs.Handler {
	case "discard", "":
	case "echo":
		s.Handler.Kind = HandlerEcho
	case "forward":
		s.Handler.Kind = HandlerForward
	default:
		return r, s, fmt.Errorf("listener %s: unknown handler %q", r.ID, rs.Handler)
	}
	if err := ValidateName(r.Name); err != nil {
		return r, s, fmt.Errorf("listener %s: %w", r.ID, err)
	}
	return r, s, nil
}

// ValidateRecords checks saved records without binding anything, so that a
// corrupt state file stops the daemon before it touches a port. A spec that
// a stricter check of a later version refuses is not corruption: Restore
// brings that listener back FAILED.
func ValidateRecords(raws []json.RawMessage) error {
	seen := map[string]bool{}
	for i, raw := range raws {
		r, _, err := fromRecord(raw)
		if err != nil {
			return fmt.Errorf("listener record %d: %w", i, err)
		}
		if seen[r.ID] || (r.Name != "" && seen["name:"+r.Name]) {
			return fmt.Errorf("listener record %d: duplicate id or name", i)
		}
		seen[r.ID], seen["name:"+r.Name] = true, r.Name != ""
	}
	return nil
}

// stageLocked snapshots every listener that is not closing for the next
// save and returns its version; m.mu must be held. Without a persister it
// returns 0, which commit does not wait for. Once Shutdown has begun it
// fails with ErrShuttingDown: every listener is closing then, and the
// saved state must keep them for the next start.
func (m *Manager) stageLocked() (uint64, error) {
	if m.saver == nil {
		return 0, nil
	}
	if m.shutting {
		// A change that was taken just before Shutdown began: the state
		// saved before the shutdown is what the next start restores, so
		// this change is not saved, and its caller must not be told it was.
		return 0, fmt.Errorf("%w: the change was not saved, and the next start will not have it", ErrShuttingDown)
	}
	ls := m.sortedLocked()
	recs := make([]json.RawMessage, 0, len(ls))
	for _, l := range ls {
		if l.closing() {
			continue
		}
		b, err := json.Marshal(toRecord(l))
		if err != nil {
			return 0, fmt.Errorf("%w: %v", ErrPersist, err)
		}
		recs = append(recs, b)
	}
	return m.saver.stage(recs), nil
}

// commit waits, without m.mu, until the snapshot of version v is saved.
func (m *Manager) commit(v uint64) error {
	if v == 0 {
		return nil
	}
	return m.saver.wait(v)
}

// save snapshots the state and waits until it is saved; m.mu must not be
// held.
func (m *Manager) save() error {
	m.mu.Lock()
	v, err := m.stageLocked()
	m.mu.Unlock()
	if err != nil {
		return err
	}
	return m.commit(v)
}

// Restore brings back saved listeners with their ids, names and ports. One
// that cannot bind comes back FAILED with its error, never dropped. It
// returns how many are listening and how many failed.
func (m *Manager) Restore(ctx context.Context, raws []json.RawMessage) (listening, failed int, err error) {
	if err := ValidateRecords(raws); err != nil {
		return 0, 0, err
	}
	type saved struct {
		r    record
		spec Spec
		ip   netip.Addr
		err  error // checking its spec or resolving its host
	}
	all := make([]saved, len(raws))
	for i, raw := range raws { // names resolve without m.mu
		sv := &all[i]
		sv.r, sv.spec, _ = fromRecord(raw)
		if sv.err = validateSpec(&sv.spec); sv.err != nil {
			sv.err = staleSpec(sv.err)
			continue
		}
		sv.ip, sv.err = resolveHost(ctx, sv.spec.Host)
	}
	m.mu.Lock()
	for _, sv := range all {
		r, spec, err := sv.r, sv.spec, sv.err
		var l *Listener
		if err == nil {
			l, err = m.bindLocked(ctx, r.ID, r.Name, spec, sv.ip, r.BoundPort, r.Created)
		}
		if err != nil {
			l = m.newListener(r.ID, r.Name, spec, nil, r.Created)
			l.boundPort = r.BoundPort
			l.state.Store(int32(StateFailed))
			l.lastErr = err.Error()
			closeOnce(l.acceptDone)
			m.insertLocked(l)
			l.log.Warn("listener restored as FAILED", "err", err)
			failed++
			continue
		}
		listening++
	}
	m.mu.Unlock()
	return listening, failed, m.save()
}

// staleSpec explains a saved spec that the current checks refuse.
func staleSpec(err error) error {
	return fmt.Errorf("saved spec no longer valid, close the listener and create it again: %w", err)
}

// checkSaved refuses a listener whose spec the current checks refuse (it
// was restored FAILED for that): binding it again cannot help.
func checkSaved(l *Listener) error {
	spec := l.spec
	if err := validateSpec(&spec); err != nil {
		return fmt.Errorf("listener %s: %w", l.id, staleSpec(err))
	}
	return nil
}

// Rebind binds a FAILED listener again with its id and spec.
func (m *Manager) Rebind(ctx context.Context, ref string) (*Listener, error) {
	old, err := m.getToChange(ref)
	if err != nil {
		return nil, err
	}
	if err := checkSaved(old); err != nil { // before its host, which may not resolve either
		return nil, err
	}
	ip, err := resolveHost(ctx, old.spec.Host) // a FAILED listener's spec never changes
	if err != nil {
		old.setLastError(err)
		return nil, err
	}
	m.mu.Lock()
	l, err := m.rebindLocked(ctx, old, ip)
	m.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return l, m.save()
}

// rebindLocked binds old again on ip; m.mu must be held.
func (m *Manager) rebindLocked(ctx context.Context, old *Listener, ip netip.Addr) (*Listener, error) {
	if m.shutting {
		return nil, ErrShuttingDown
	}
	if m.byID[old.id] != old || old.closing() { // closed (or rebound) since it was found
		return nil, fmt.Errorf("listener %s: %w", old.id, ErrNotFound)
	}
	if State(old.state.Load()) != StateFailed {
		return nil, fmt.Errorf("listener %s is %s; only a failed listener can be rebound: %w", old.id, State(old.state.Load()), ErrNotFailed)
	}
	l, err := m.bindLocked(ctx, old.id, old.name, old.spec, ip, old.boundPort, old.created)
	if err != nil {
		old.setLastError(err)
		return nil, err
	}
	return l, nil
}

// bindLocked binds a listener on ip (its spec's host, resolved without
// m.mu), inserts it (replacing a FAILED one of the same id) and starts its
// accept loop; m.mu must be held. For a spec with port 0, the previously
// bound port is tried first.
func (m *Manager) bindLocked(ctx context.Context, id, name string, spec Spec, ip netip.Addr, lastPort uint16, created time.Time) (*Listener, error) {
	if err := m.policy.Check(ip, spec.Port); err != nil {
		return nil, err
	}
	var ln *net.TCPListener
	var err error
	if spec.Port == 0 && lastPort != 0 {
		ln, err = bind(ctx, ip, lastPort, spec)
		if err != nil && !errors.Is(err, ErrAddressInUse) {
			return nil, err
		}
	}
	if ln == nil {
		if ln, err = bind(ctx, ip, spec.Port, spec); err != nil {
			return nil, err
		}
	}
	l := m.newListener(id, name, spec, ln, created)
	m.insertLocked(l)
	m.bus.Publish(events.Event{Listener: id, Kind: events.KindListenerStarted,
		Detail: &events.Detail{Address: l.bound, Name: name}})
	l.log.Info("listener started")
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		l.acceptLoop()
	}()
	return l, nil
}

func (m *Manager) insertLocked(l *Listener) {
	m.byID[l.id] = l
	if l.name != "" {
		m.byName[l.name] = l
	}
}
