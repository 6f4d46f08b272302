package listener

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/listenerd/listenerd/internal/events"
)

// Restore brings back saved listeners with their ids, names and ports. One
// that cannot bind comes back FAILED with its error, never dropped. It
// returns how many are listening and how many failed.
func (m *Manager) Restore(ctx context.Context, raws []json.RawMessage) (listening, failed int, err error) {
	return m.RestoreWith(ctx, raws, nil)
}

// RestoreWith is Restore, where a listener whose id has a socket in files
// (a listening TCP socket passed in, as systemd passes back its descriptor
// store) takes that socket instead of binding, if it is on the listener's
// address; RestoreWith closes every file.
func (m *Manager) RestoreWith(ctx context.Context, raws []json.RawMessage, files map[string]*os.File) (listening, failed int, err error) {
	defer func() {
		for _, f := range files {
			_ = f.Close()
		}
	}()
	if err := ValidateRecords(raws); err != nil {
		return 0, 0, err
	}
	type saved struct {
		r    record
		spec Spec
		h    Handler
		ip   netip.Addr
		err  error // checking its spec or resolving its host
	}
	all := make([]saved, len(raws))
	for i, raw := range raws { // names resolve without m.mu
		sv := &all[i]
		sv.r, sv.spec, _ = fromRecord(raw)
		if sv.h, sv.err = m.handlers.validateSpec(sv.spec); sv.err != nil {
			sv.err = staleSpec(sv.err)
			continue
		}
		sv.ip, sv.err = resolveHost(ctx, sv.spec.Host)
	}
	m.mu.Lock()
	for _, sv := range all {
		r, spec, err := sv.r, sv.spec, sv.err
		var l *Listener
		if f := files[r.ID]; f != nil && err == nil {
			l = m.takePassedLocked(f, r, spec, sv.h, sv.ip)
		}
		if l == nil && err == nil {
			l, err = m.bindLocked(ctx, r.ID, r.Name, spec, sv.h, sv.ip, r.BoundPort, r.Created)
		}
		if err != nil {
			l = m.newListener(r.ID, r.Name, spec, sv.h, nil, r.Created)
			l.declared.Store(r.Declared)
			l.boundPort = r.BoundPort
			l.state.Store(int32(StateFailed))
			l.lastErr = err.Error()
			closeOnce(l.acceptDone)
			m.insertLocked(l)
			l.log.Warn("listener restored as FAILED", "err", err)
			failed++
			continue
		}
		l.declared.Store(r.Declared)
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
func (m *Manager) checkSaved(l *Listener) (Handler, error) {
	h, err := m.handlers.validateSpec(l.spec)
	if err != nil {
		return nil, fmt.Errorf("listener %s: %w", l.id, staleSpec(err))
	}
	return h, nil
}

// Rebind binds a FAILED listener again with its id and spec.
func (m *Manager) Rebind(ctx context.Context, ref string) (*Listener, error) {
	old, err := m.getToChange(ref)
	if err != nil {
		return nil, err
	}
	h, err := m.checkSaved(old) // before its host, which may not resolve either
	if err != nil {
		return nil, err
	}
	ip, err := resolveHost(ctx, old.spec.Host) // a FAILED listener's spec never changes
	if err != nil {
		old.setLastError(err)
		return nil, err
	}
	m.mu.Lock()
	l, err := m.rebindLocked(ctx, old, h, ip)
	m.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return l, m.save()
}

// rebindLocked binds old again on ip; m.mu must be held.
func (m *Manager) rebindLocked(ctx context.Context, old *Listener, h Handler, ip netip.Addr) (*Listener, error) {
	if m.shutting {
		return nil, ErrShuttingDown
	}
	if m.byID[old.id] != old || old.closing() { // closed (or rebound) since it was found
		return nil, fmt.Errorf("listener %s: %w", old.id, ErrNotFound)
	}
	if State(old.state.Load()) != StateFailed {
		return nil, fmt.Errorf("listener %s is %s; only a failed listener can be rebound: %w", old.id, State(old.state.Load()), ErrNotFailed)
	}
	l, err := m.bindLocked(ctx, old.id, old.name, old.spec, h, ip, old.boundPort, old.created)
	if err != nil {
		old.setLastError(err)
		return nil, err
	}
	l.declared.Store(old.declared.Load())
	return l, nil
}

// bindLocked binds a listener on ip (its spec's host, resolved without
// m.mu), inserts it (replacing a FAILED one of the same id) and starts its
// accept loop; m.mu must be held. For a spec with port 0, the previously
// bound port is tried first.
func (m *Manager) bindLocked(ctx context.Context, id, name string, spec Spec, h Handler, ip netip.Addr, lastPort uint16, created time.Time) (*Listener, error) {
	if err := m.policy.Check(ip, spec.Port); err != nil {
		return nil, err
	}
	if !m.takeFDs(listenerFDs) { // given back when its socket is closed (beginClose)
		return nil, m.errDescriptors()
	}
	var ln *net.TCPListener
	var err error
	if spec.Port == 0 && lastPort != 0 {
		ln, err = bind(ctx, ip, lastPort, spec)
		if err != nil && !errors.Is(err, ErrAddressInUse) {
			m.giveFDs(listenerFDs)
			return nil, err
		}
	}
	if ln == nil {
		if ln, err = bind(ctx, ip, spec.Port, spec); err != nil {
			m.giveFDs(listenerFDs)
			return nil, err
		}
	}
	return m.startLocked(id, name, spec, h, ln, created), nil
}

// startLocked makes a listener of a listening socket, inserts it (replacing
// a FAILED one of the same id) and starts its accept loop; m.mu must be
// held, and the socket's descriptors taken (takeFDs).
func (m *Manager) startLocked(id, name string, spec Spec, h Handler, ln *net.TCPListener, created time.Time) *Listener {
	l := m.newListener(id, name, spec, h, ln, created)
	m.insertLocked(l)
	if m.onBound != nil {
		m.onBound(id, ln)
	}
	m.bus.Publish(events.Event{Listener: id, Kind: events.KindListenerStarted,
		Detail: &events.Detail{Address: l.bound, Name: name}})
	l.log.Info("listener started")
	l.specFaults(spec.Faults)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		l.acceptLoop()
	}()
	return l
}

func (m *Manager) insertLocked(l *Listener) {
	m.byID[l.id] = l
	if l.name != "" {
		m.byName[l.name] = l
	}
}
