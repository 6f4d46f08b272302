package listener

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"
)

// Persister saves the desired state: one JSON record a listener. Save must
// be atomic and durable when it returns.
type Persister interface {
	Save(records []json.RawMessage) error
}

// RecordVersion is the format of the records toRecord writes: 2 since the
// overflow policy became a word and a handler's options its own object.
// UpgradeRecords reads version 1 (listenerd before QUEUE).
const RecordVersion = 2

// record is a listener's desired state as persisted.
type record struct {
	ID      string    `json:"id"`
	Name    string    `json:"name,omitempty"`
	Created time.Time `json:"create_time"`
	// BoundPort is the port last bound, so a listener created with port 0
	// gets the same port back after a restart when it is free.
	BoundPort uint16     `json:"bound_port,omitempty"`
	Spec      recordSpec `json:"spec"`
	// Declared: the listener is the declared listeners' (--listeners), so
	// a reconcile after a restart closes it when the file no longer has it.
	Declared bool `json:"declared,omitempty"`
}

type recordSpec struct {
	Host           string          `json:"host,omitempty"`
	Port           uint16          `json:"port,omitempty"`
	Backlog        int             `json:"backlog,omitempty"`
	MaxConnections *int64          `json:"max_connections,omitempty"` // absent: unlimited
	Overflow       string          `json:"overflow,omitempty"`        // absent: reject
	QueueLength    int             `json:"queue_length,omitempty"`
	QueueTimeout   time.Duration   `json:"queue_timeout_ns,omitempty"`
	IdleTimeout    time.Duration   `json:"idle_timeout_ns,omitempty"`
	MaxLifetime    time.Duration   `json:"max_lifetime_ns,omitempty"`
	AcceptRate     float64         `json:"accept_rate,omitempty"`
	AcceptBurst    int             `json:"accept_burst,omitempty"`
	PerSource      int64           `json:"max_connections_per_source,omitempty"` // 0: unlimited
	AllowHalfOpen  bool            `json:"allow_half_open,omitempty"`
	PauseOnConnect bool            `json:"pause_on_connect,omitempty"`
	Handler        string          `json:"handler"`
	HandlerOptions json.RawMessage `json:"handler_options,omitempty"`
	Allow          []netip.Prefix  `json:"allow_cidrs,omitempty"`
	Deny           []netip.Prefix  `json:"deny_cidrs,omitempty"`
	Nagle          bool            `json:"nagle,omitempty"`
	KeepAlive      time.Duration   `json:"keepalive_ns,omitempty"` // -1: off
}

func toRecord(l *Listener) record {
	s := l.spec
	lim := *l.limits.Load()
	rs := recordSpec{
		Host: s.Host, Port: s.Port, Backlog: s.Backlog,
		QueueLength: lim.QueueLength, QueueTimeout: lim.QueueTimeout,
		IdleTimeout: lim.IdleTimeout, MaxLifetime: lim.MaxLifetime,
		AcceptRate: lim.AcceptRate, AcceptBurst: lim.AcceptBurst, PerSource: lim.PerSource,
		AllowHalfOpen: s.AllowHalfOpen, PauseOnConnect: s.PauseOnConnect,
		Handler: s.Handler.Name(), HandlerOptions: s.Handler.Options,
		Allow: s.Allow, Deny: s.Deny, Nagle: s.Nagle, KeepAlive: s.KeepAlive,
	}
	if n, ok := lim.MaxConnections.Max(); ok {
		rs.MaxConnections = &n
	}
	if lim.Overflow != OverflowReject {
		rs.Overflow = lim.Overflow.String()
	}
	return record{ID: l.id, Name: l.name, Created: l.created, BoundPort: l.boundPort, Spec: rs, Declared: l.declared.Load()}
}

// fromRecord decodes a saved record. Its error means the record cannot be
// read at all (a corrupt state file); a spec that decodes but that the
// current checks refuse is not its concern: see Restore.
func fromRecord(raw json.RawMessage) (record, Spec, error) {
	var r record
	if err := decodeStrict(raw, &r); err != nil {
		return r, Spec{}, err
	}
	if !idLikeRE.MatchString(r.ID) {
		return r, Spec{}, fmt.Errorf("bad listener id %q", r.ID)
	}
	rs := r.Spec
	s := Spec{
		Host: rs.Host, Port: rs.Port, Backlog: rs.Backlog,
		Limits: Limits{QueueLength: rs.QueueLength, QueueTimeout: rs.QueueTimeout,
			IdleTimeout: rs.IdleTimeout, MaxLifetime: rs.MaxLifetime,
			AcceptRate: rs.AcceptRate, AcceptBurst: rs.AcceptBurst, PerSource: rs.PerSource},
		AllowHalfOpen: rs.AllowHalfOpen, PauseOnConnect: rs.PauseOnConnect,
		Handler: HandlerSpec{Kind: rs.Handler, Options: rs.HandlerOptions},
		Allow:   rs.Allow, Deny: rs.Deny, Nagle: rs.Nagle, KeepAlive: rs.KeepAlive,
	}
	if rs.MaxConnections != nil {
		if *rs.MaxConnections < 0 {
			return r, s, fmt.Errorf("listener %s: max_connections %d", r.ID, *rs.MaxConnections)
		}
		s.Limits.MaxConnections = AtMost(*rs.MaxConnections)
	}
	switch rs.Overflow {
	case "", "reject":
	case "backlog":
		s.Limits.Overflow = OverflowBacklog
	case "queue":
		s.Limits.Overflow = OverflowQueue
	default:
		return r, s, fmt.Errorf("listener %s: unknown overflow policy %q", r.ID, rs.Overflow)
	}
	if rs.Handler == "" {
		return r, s, fmt.Errorf("listener %s: no handler", r.ID)
	}
	if err := ValidateName(r.Name); err != nil {
		return r, s, fmt.Errorf("listener %s: %w", r.ID, err)
	}
	return r, s, nil
}

func decodeStrict(raw json.RawMessage, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// UpgradeRecords brings records saved in an older format (version) to
// RecordVersion. A record that cannot be read as its version's format is
// an error: the state file is corrupt.
func UpgradeRecords(version int, raws []json.RawMessage) ([]json.RawMessage, error) {
	switch version {
	case RecordVersion:
		return raws, nil
	case 1:
		out := make([]json.RawMessage, len(raws))
		for i, raw := range raws {
			up, err := upgradeV1(raw)
			if err != nil {
				return nil, fmt.Errorf("listener record %d (version 1): %w", i, err)
			}
			out[i] = up
		}
		return out, nil
	}
	return nil, fmt.Errorf("records of version %d: this listenerd reads versions 1-%d", version, RecordVersion)
}

// recordSpecV1 is recordSpec as version 1 wrote it: max_connections -1
// for unlimited, the BACKLOG policy as a boolean, forward's options inline.
type recordSpecV1 struct {
	Host           string         `json:"host,omitempty"`
	Port           uint16         `json:"port,omitempty"`
	Backlog        int            `json:"backlog,omitempty"`
	MaxConnections int64          `json:"max_connections"`
	OverflowWait   bool           `json:"overflow_backlog,omitempty"`
	IdleTimeout    time.Duration  `json:"idle_timeout_ns,omitempty"`
	MaxLifetime    time.Duration  `json:"max_lifetime_ns,omitempty"`
	AcceptRate     float64        `json:"accept_rate,omitempty"`
	AcceptBurst    int            `json:"accept_burst,omitempty"`
	PerSource      int64          `json:"max_connections_per_source,omitempty"`
	AllowHalfOpen  bool           `json:"allow_half_open,omitempty"`
	PauseOnConnect bool           `json:"pause_on_connect,omitempty"`
	Handler        string         `json:"handler"`
	Upstream       string         `json:"upstream,omitempty"`
	ConnectTimeout time.Duration  `json:"connect_timeout_ns,omitempty"`
	Allow          []netip.Prefix `json:"allow_cidrs,omitempty"`
	Deny           []netip.Prefix `json:"deny_cidrs,omitempty"`
	Nagle          bool           `json:"nagle,omitempty"`
	KeepAlive      time.Duration  `json:"keepalive_ns,omitempty"`
}

func upgradeV1(raw json.RawMessage) (json.RawMessage, error) {
	var r struct {
		ID        string       `json:"id"`
		Name      string       `json:"name,omitempty"`
		Created   time.Time    `json:"create_time"`
		BoundPort uint16       `json:"bound_port,omitempty"`
		Spec      recordSpecV1 `json:"spec"`
	}
	if err := decodeStrict(raw, &r); err != nil {
		return nil, err
	}
	o := r.Spec
	n := record{ID: r.ID, Name: r.Name, Created: r.Created, BoundPort: r.BoundPort, Spec: recordSpec{
		Host: o.Host, Port: o.Port, Backlog: o.Backlog,
		IdleTimeout: o.IdleTimeout, MaxLifetime: o.MaxLifetime,
		AcceptRate: o.AcceptRate, AcceptBurst: o.AcceptBurst, PerSource: o.PerSource,
		AllowHalfOpen: o.AllowHalfOpen, PauseOnConnect: o.PauseOnConnect,
		Handler: o.Handler, Allow: o.Allow, Deny: o.Deny, Nagle: o.Nagle, KeepAlive: o.KeepAlive,
	}}
	if o.MaxConnections >= 0 {
		n.Spec.MaxConnections = &o.MaxConnections
	}
	if o.OverflowWait {
		n.Spec.Overflow = "backlog"
	}
	switch o.Handler {
	case "", DiscardName:
		n.Spec.Handler = DiscardName
	case "echo":
	case "forward":
		n.Spec.HandlerOptions = ForwardTo(o.Upstream, o.ConnectTimeout).Options
	default: // version 1 knew no other
		return nil, fmt.Errorf("listener %s: unknown handler %q", r.ID, o.Handler)
	}
	return json.Marshal(n)
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
	return m.saver.stage(), nil
}

// snapshot is the saver's: the records of every listener that is not
// closing, and the newest version they cover. Once Shutdown has begun it
// fails with ErrShuttingDown: every listener is closing then, and the
// saved state must keep them for the next start.
func (m *Manager) snapshot() (uint64, []json.RawMessage, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v := m.saver.version()
	if m.shutting {
		return v, nil, fmt.Errorf("%w: the change was not saved, and the next start will not have it", ErrShuttingDown)
	}
	recs, err := m.recordsLocked()
	return v, recs, err
}

// recordsLocked returns the records of every listener that is not
// closing, oldest first; m.mu must be held.
func (m *Manager) recordsLocked() ([]json.RawMessage, error) {
	ls := m.sortedLocked()
	recs := make([]json.RawMessage, 0, len(ls))
	for _, l := range ls {
		if l.closing() {
			continue
		}
		b, err := json.Marshal(toRecord(l))
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrPersist, err)
		}
		recs = append(recs, b)
	}
	return recs, nil
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
