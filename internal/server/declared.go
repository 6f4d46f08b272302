package server

import (
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/listenerd/listenerd/internal/declare"
	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/fleet"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/service"
	"github.com/listenerd/listenerd/internal/version"
)

// newReconciler returns the reconcile of the daemon's --listeners file:
// each change is a listener_reconciled event and a log line.
func newReconciler(cfg Config, mgr *listener.Manager, log *slog.Logger) *declare.Reconciler {
	d := service.NewDeclared(mgr)
	log = log.With("listeners_file", cfg.Listeners)
	applied, failed := reconcileEvents(mgr.Bus(), log)
	return &declare.Reconciler{
		Path: cfg.Listeners, Target: d, List: d.List, Log: log, Resync: cfg.ListenersResync,
		Applied: applied, Failed: failed,
	}
}

// reconcileEvents returns what tells of a reconcile of declared listeners,
// whatever their source: each change is a listener_reconciled event and a
// log line, and so is a reconcile that could not start.
func reconcileEvents(bus *events.Bus, log *slog.Logger) (applied func(r declare.Result, source string, putBack bool), failed func(err error, source string)) {
	applied = func(r declare.Result, source string, putBack bool) {
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
	}
	failed = func(err error, source string) {
		log.Warn("declared listeners not reconciled: the running listeners are left as they are", "err", err)
		bus.Publish(events.Event{Kind: events.KindListenerReconciled, Detail: &events.Detail{Error: err.Error(),
			Reconcile: &events.Reconcile{Action: "failed", Source: source}}})
	}
	return applied, failed
}

// newDesired returns the reconcile of this host's desired listeners in
// the fleet's bucket (--nats): the same reconcile as the file's, and the
// listeners' status written back, again after each listener-level event
// and each close that begins (closing), and the host key written every
// --nats-heartbeat.
func newDesired(cfg FleetConfig, resync time.Duration, nc *nats.Conn, mgr *listener.Manager, closing <-chan struct{}, log *slog.Logger) *fleet.Desired {
	d := service.NewDeclared(mgr)
	log = log.With("bucket", fleet.Bucket)
	applied, failed := reconcileEvents(mgr.Bus(), log)
	return &fleet.Desired{Conn: nc, Host: cfg.Host, Replicas: cfg.Replicas, Log: log, Resync: resync,
		Target: d, List: d.List, Bus: mgr.Bus(), Closing: closing,
		Heartbeat: cfg.Heartbeat, Boot: mgr.Bus().BootID(), Version: version.Get().String(),
		Applied: func(r declare.Result) { applied(r, fleet.BucketSource, false) },
		Invalid: func(err error) { failed(err, fleet.BucketSource) },
	}
}
