package service

import (
	"context"
	"time"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/listener"
)

// CanonicalSpec checks a spec as CreateListener does (every failure names
// its field) and returns it as the daemon reports a listener's spec: the
// defaults filled in, so that two specs that ask for the same listener are
// equal. Faults are dropped: they apply when a listener is created and
// are not part of what a declared listener must stay.
func CanonicalSpec(p *listenerdv1.ListenerSpec) (*listenerdv1.ListenerSpec, error) {
	s, err := specFromProto(p)
	if err != nil {
		return nil, err
	}
	out := specToProto(s)
	out.Faults = nil
	return out, nil
}

// Declared is the daemon's own way to apply the declared listeners'
// changes: straight to the manager, marking the listeners declared, with
// the same checks and conversions as the API.
type Declared struct{ m *listener.Manager }

// NewDeclared returns the declared listeners' access to m.
func NewDeclared(m *listener.Manager) *Declared { return &Declared{m: m} }

// List returns every listener, as ListListeners does.
func (d *Declared) List() []*listenerdv1.Listener {
	infos, _ := d.m.List()
	out := make([]*listenerdv1.Listener, len(infos))
	for i, in := range infos {
		out[i] = listenerToProto(in)
	}
	return out
}

// Create creates a declared listener and returns its id.
func (d *Declared) Create(ctx context.Context, name string, spec *listenerdv1.ListenerSpec) (string, error) {
	s, err := specFromProto(spec)
	if err != nil {
		return "", err
	}
	l, err := d.m.CreateDeclared(ctx, name, s)
	if err != nil {
		return "", err
	}
	return l.ID(), nil
}

// Update sets a listener's limits to those of spec (when limits is true)
// and marks it declared.
func (d *Declared) Update(_ context.Context, id string, spec *listenerdv1.ListenerSpec, limits bool) error {
	if limits {
		lim, err := limitsFromProto(spec.GetLimits())
		if err != nil {
			return err
		}
		if _, err := d.m.SetLimits(id, func(listener.Limits) (listener.Limits, error) { return lim, nil }); err != nil {
			return err
		}
	}
	return d.m.Declare(id, true)
}

// Rebind replaces a listener with one of spec under its name (see
// listener.Manager.Replace), declared, and returns the new id.
func (d *Declared) Rebind(ctx context.Context, id string, spec *listenerdv1.ListenerSpec, drain time.Duration) (string, error) {
	s, err := specFromProto(spec)
	if err != nil {
		return "", err
	}
	if err := d.m.Declare(id, true); err != nil {
		return "", err
	}
	l, err := d.m.Replace(ctx, id, s, drain)
	if err != nil {
		return "", err
	}
	return l.ID(), nil
}

// Close closes a listener, its connections draining for up to drain.
func (d *Declared) Close(_ context.Context, id string, drain time.Duration) error {
	_, err := d.m.Close(id, drain, false)
	return err
}
