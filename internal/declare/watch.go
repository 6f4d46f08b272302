package declare

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// Reconciler makes a listeners file true in the daemon: at start, when
// the file changes, and every Resync.
type Reconciler struct {
	Path   string
	Target Target
	// List returns the listeners there are, as ListListeners does.
	List func() []*listenerdv1.Listener
	// Applied is told of each change carried out, or that failed (its
	// Err); putBack says the file had not changed since the last
	// reconcile, so the change puts back one made through the API.
	Applied func(r Result, source string, putBack bool)
	// Failed is told of a reconcile that could not start: the file does
	// not read or parse. Nothing was changed.
	Failed func(err error, source string)
	Log    *slog.Logger
	// Resync reconciles this often even when the file does not change,
	// putting back changes made through the API; 0: only on changes.
	Resync time.Duration
	// Quiet is how long the file's directory must be still before a
	// change is read (a burst of writes is read once); at most ten times
	// it after the first change of a burst. 0: DefaultQuiet.
	Quiet time.Duration

	last []byte // the file as last made true
}

// ErrNotApplied marks a reconcile some of whose changes failed: the file
// was read, and the others were made.
var ErrNotApplied = errors.New("failed")

// DefaultQuiet is Reconciler.Quiet's default.
const DefaultQuiet = 100 * time.Millisecond

// Reconcile reads the file and makes it true. A file that does not read
// or parse changes nothing and is the error returned; changes that fail
// are reported (Applied) and counted in the error.
func (r *Reconciler) Reconcile(ctx context.Context) error {
	source := "file " + r.Path
	data, err := os.ReadFile(r.Path)
	var set *Set
	if err == nil {
		set, err = Parse(r.Path, data)
	}
	if err != nil {
		if r.Failed != nil {
			r.Failed(err, source)
		}
		return err
	}
	putBack := r.last != nil && bytes.Equal(data, r.last)
	_, err = ReconcileSet(ctx, r.Target, r.List, set, func(res Result) {
		if r.Applied != nil {
			r.Applied(res, source, putBack)
		}
	})
	r.last = data
	return err
}

// ReconcileSet makes set true through t, the one reconcile of every
// source of declared listeners (a file, a key-value bucket): the
// declared listeners set does not name are closed, those it names are
// created, changed or adopted. list returns the listeners there are;
// report, when not nil, is told of each change carried out or failed.
// The error counts the failed changes (ErrNotApplied).
func ReconcileSet(ctx context.Context, t Target, list func() []*listenerdv1.Listener, set *Set, report func(Result)) ([]Result, error) {
	plan := Plan(list(), set, Options{Prune: true, Owned: declared, Adopt: true})
	failed := 0
	results := Apply(ctx, t, plan, DefaultParallel, func(res Result) {
		if res.Err != nil {
			failed++
		}
		if report != nil {
			report(res)
		}
	})
	if failed > 0 {
		return results, fmt.Errorf("%s: %d of %d changes: %w (the next reconcile tries again)", set.Source, failed, len(plan), ErrNotApplied)
	}
	return results, nil
}

func declared(l *listenerdv1.Listener) bool { return l.GetStatus().GetDeclared() }

// Run watches the file's directory until ctx ends, and reconciles after
// each burst of changes in it, and every Resync. It watches the
// directory, not the file, so that an editor's rename over the file and
// a Kubernetes ConfigMap's swap of symbolic links are seen.
func (r *Reconciler) Run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	dir := filepath.Dir(r.Path)
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watching %s: %w", dir, err)
	}
	quiet := r.Quiet
	if quiet <= 0 {
		quiet = DefaultQuiet
	}
	var resync <-chan time.Time
	if r.Resync > 0 {
		t := time.NewTicker(r.Resync)
		defer t.Stop()
		resync = t.C
	}
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	var first time.Time // of the burst being waited out; zero: none
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("file watch ended")
			}
			if r.Log != nil {
				r.Log.Debug("listeners file directory changed", "event", ev.String())
			}
			now := time.Now()
			if first.IsZero() {
				first = now
			}
			// Wait for quiet, but not past ten times it from the burst's
			// start: a file written on and on is still read.
			settle.Reset(min(quiet, max(0, first.Add(10*quiet).Sub(now))))
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("file watch ended")
			}
			if r.Log != nil {
				r.Log.Warn("watching the listeners file", "err", err)
			}
			// Events may be lost (overflow): read the file again.
			settle.Reset(quiet)
		case <-settle.C:
			first = time.Time{}
			r.reconcileLogged(ctx)
		case <-resync:
			r.reconcileLogged(ctx)
		}
	}
}

// reconcileLogged reconciles and logs a failure Failed was not told of.
func (r *Reconciler) reconcileLogged(ctx context.Context) {
	err := r.Reconcile(ctx)
	if err != nil && r.Log != nil && (r.Failed == nil || errors.Is(err, ErrNotApplied)) {
		r.Log.Warn("declared listeners not reconciled", "err", err)
	}
}
