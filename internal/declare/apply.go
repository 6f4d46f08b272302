package declare

import (
	"context"
	"sync"
	"time"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// Target carries changes out: the daemon's manager (service.Declared), or
// the API (ctl apply).
type Target interface {
	// Create creates a listener named name and returns its id.
	Create(ctx context.Context, name string, spec *listenerdv1.ListenerSpec) (string, error)
	// Update sets a listener's limits to spec's, when limits is true, and
	// takes it as declared.
	Update(ctx context.Context, id string, spec *listenerdv1.ListenerSpec, limits bool) error
	// Rebind replaces a listener with a new one of spec under its name,
	// the old one's connections draining for up to drain, and returns the
	// new id.
	Rebind(ctx context.Context, id string, spec *listenerdv1.ListenerSpec, drain time.Duration) (string, error)
	// Close closes a listener, its connections draining for up to drain.
	Close(ctx context.Context, id string, drain time.Duration) error
}

// Result is a change carried out: the listener's id after it (the new one
// of a create or a rebind), or the error.
type Result struct {
	Change
	NewID string
	Err   error
}

// DefaultParallel is how many changes of one kind Apply makes at once.
// Changes that wait for the state to be saved share saves (group commit),
// so creating many listeners at once costs a few saves, not one each.
const DefaultParallel = 32

// Apply carries out a plan: closes first, so that their ports and names
// are free, then rebinds, updates and creates, each kind up to parallel
// at once (DefaultParallel when 0). Unchanged and kept listeners are not
// touched. report, when not nil, is called with each result as it comes
// (one call at a time). Apply returns the results in the plan's order.
func Apply(ctx context.Context, t Target, plan []Change, parallel int, report func(Result)) []Result {
	if parallel <= 0 {
		parallel = DefaultParallel
	}
	results := make([]Result, len(plan))
	var mu sync.Mutex // report, one call at a time
	for _, step := range []Action{Close, Rebind, Update, Create} {
		sem := make(chan struct{}, parallel)
		var wg sync.WaitGroup
		for i, c := range plan {
			if c.Action != step {
				continue
			}
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				r := apply(ctx, t, c)
				results[i] = r
				if report != nil {
					mu.Lock()
					report(r)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}
	for i, c := range plan {
		if c.Action == Unchanged || c.Action == Keep {
			results[i] = Result{Change: c, NewID: c.ID}
		}
	}
	return results
}

func apply(ctx context.Context, t Target, c Change) Result {
	r := Result{Change: c, NewID: c.ID}
	switch c.Action {
	case Create:
		r.NewID, r.Err = t.Create(ctx, c.Name, c.Spec)
	case Update:
		r.Err = t.Update(ctx, c.ID, c.Spec, c.Limits)
	case Rebind:
		r.NewID, r.Err = t.Rebind(ctx, c.ID, c.Spec, c.Drain)
	case Close:
		r.Err = t.Close(ctx, c.ID, c.Drain)
	}
	return r
}
