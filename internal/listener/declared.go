package listener

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/listenerd/listenerd/internal/events"
)

// A declared listener is owned by the reconcile of a desired set (the
// daemon's --listeners file, internal/declare): the reconcile creates,
// changes and closes it to match the set, and closes it when the set no
// longer names it. The mark is saved with the listener, so that after a
// restart the reconcile still knows which listeners are its own.

// CreateDeclared is Create of a declared listener.
func (m *Manager) CreateDeclared(ctx context.Context, name string, spec Spec) (*Listener, error) {
	return m.create(ctx, name, spec, true)
}

// Declare marks a listener declared (or not) and saves the mark.
func (m *Manager) Declare(ref string, declared bool) error {
	l, err := m.getToChange(ref)
	if err != nil {
		return err
	}
	if l.declared.Swap(declared) == declared {
		return nil
	}
	return m.save()
}

// Replace puts a new listener of spec in the place of ref's, under its
// name and with its declared mark, for a change that the listener cannot
// take in place (host, port, backlog, handler, ...). The new listener has a
// new id. Its socket is bound before the old listener stops accepting, so
// that a bind that fails changes nothing; only when the old listener holds
// the address itself (the same port) is it closed first, and then a bind
// that still fails leaves the name without a listener. The old listener's
// connections drain for up to drain.
func (m *Manager) Replace(ctx context.Context, ref string, spec Spec, drain time.Duration) (*Listener, error) {
	old, err := m.getToChange(ref)
	if err != nil {
		return nil, err
	}
	h, err := m.handlers.validateSpec(spec)
	if err != nil {
		return nil, err
	}
	ip, err := resolveHost(ctx, spec.Host)
	if err != nil {
		return nil, err
	}
	bindNew := func() (*Listener, error) {
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.shutting {
			return nil, ErrShuttingDown
		}
		if m.byID[old.id] != old {
			return nil, fmt.Errorf("listener %s: replaced meanwhile: %w", old.id, ErrNotFound)
		}
		if old.closing() && m.byName[old.name] != nil {
			return nil, fmt.Errorf("listener %s: closed meanwhile, and its name %q taken: %w", old.id, old.name, ErrAlreadyExists)
		}
		id := newID()
		for m.byID[id] != nil {
			id = newID()
		}
		l, err := m.bindLocked(ctx, id, old.name, spec, h, ip, 0, time.Now())
		if err == nil {
			l.declared.Store(old.declared.Load())
		}
		return l, err
	}
	l, err := bindNew()
	if err != nil && errors.Is(err, ErrAddressInUse) && State(old.state.Load()) == StateListening {
		// The old listener may hold the address itself: free it.
		m.closeOld(old, drain)
		l, err = bindNew()
	}
	if err != nil {
		if serr := m.save(); serr != nil {
			m.log.Error("state not saved after a failed replace", "listener", old.id, "err", serr)
		}
		return nil, err
	}
	m.closeOld(old, drain)
	return l, m.save()
}

// closeOld closes a replaced listener, draining for drain.
func (m *Manager) closeOld(old *Listener, drain time.Duration) {
	if began, _ := m.closeListener(old, drain, false, events.CloseListenerClosed); began && m.onClosed != nil {
		m.onClosed(old.id)
	}
}
