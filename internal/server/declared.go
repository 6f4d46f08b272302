package server

import (
	"log/slog"
	"strings"

	"github.com/listenerd/listenerd/internal/declare"
	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/service"
)

// newReconciler returns the reconcile of the daemon's --listeners file:
// each change is a listener_reconciled event and a log line.
func newReconciler(cfg Config, mgr *listener.Manager, log *slog.Logger) *declare.Reconciler {
	d := service.NewDeclared(mgr)
	bus := mgr.Bus()
	log = log.With("listeners_file", cfg.Listeners)
	return &declare.Reconciler{
		Path: cfg.Listeners, Target: d, List: d.List, Log: log, Resync: cfg.ListenersResync,
		Applied: func(r declare.Result, source string, putBack bool) {
			change := strings.Join(r.Diff, ", ")
			if r.Note != "" {
				change = strings.TrimPrefix(change+"; "+r.Note, "; ")
			}
			if putBack {
				change = strings.TrimSuffix("put back (changed through the API): "+change, ": ")
			}
			d := &events.Detail{Name: r.Name, Reconcile: &events.Reconcile{Action: string(r.Action), Change: change, Source: source}}
			id := r.NewID
			if r.Err != nil {
				d.Error = r.Err.Error()
				id = r.ID
				log.Warn("declared listener not reconciled", "name", r.Name, "action", r.Action, "change", change, "err", r.Err)
			} else {
				log.Info("declared listener reconciled", "name", r.Name, "id", id, "action", r.Action, "change", change)
			}
			bus.Publish(events.Event{Listener: id, Kind: events.KindListenerReconciled, Detail: d})
		},
		Failed: func(err error, source string) {
			log.Warn("declared listeners not reconciled: the running listeners are left as they are", "err", err)
			bus.Publish(events.Event{Kind: events.KindListenerReconciled, Detail: &events.Detail{Error: err.Error(),
				Reconcile: &events.Reconcile{Action: "failed", Source: source}}})
		},
	}
}
