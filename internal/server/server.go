// Package server wires the daemon: the API socket, the gRPC server with its
// interceptors, health and reflection, the listener manager, and the
// shutdown order.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/declare"
	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/fleet"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/metrics"
	"github.com/listenerd/listenerd/internal/service"
	"github.com/listenerd/listenerd/internal/state"
)

// Config is the daemon's configuration.
type Config struct {
	Socket          string          // API unix socket path
	ShutdownTimeout time.Duration   // drain budget on SIGTERM/SIGINT
	History         int             // events held for resume
	HistoryData     int64           // bytes of connection data the history holds; 0: the default
	HistoryBytes    int64           // bytes the history holds, events and data; 0: the default
	WatcherLag      int             // events a watcher may fall behind before it is cut
	MaxWatchers     int             // concurrent WatchEvents streams
	StateDir        string          // where listener specs persist; "" with Ephemeral
	Ephemeral       bool            // keep no state: nothing persists or is restored
	Listeners       string          // the declared listeners' file; "": none
	ListenersResync time.Duration   // reconcile the file this often even unchanged; 0: only on changes
	MaxListeners    int             // listeners at once; 0: unlimited
	MaxConnections  int64           // open connections across listeners; 0: as many as descriptors allow
	FDReserve       int64           // descriptors kept from the listeners; 0: DefaultFDReserve
	Policy          listener.Policy // ports and hosts listeners may bind
	API             APIConfig       // the optional TCP API
	HTTP            string          // host:port of the optional HTTP/JSON API (--http); TLS and token from API
	MutationRate    float64         // mutating RPCs a second on each transport; 0: no limit
	MutationBurst   int             // burst of MutationRate
	Metrics         MetricsConfig   // the optional Prometheus endpoint
	Fleet           FleetConfig     // the optional publishing of events to NATS JetStream
	Log             *slog.Logger
	Stdout          io.Writer // where the "serving on" line goes
	// Upgrade, when it receives, upgrades the daemon to its own binary
	// (SIGUSR2), as UpgradeDaemon does.
	Upgrade <-chan struct{}
	// UpgradeTimeout bounds each wait on the new process of an upgrade;
	// 0: DefaultUpgradeTimeout.
	UpgradeTimeout time.Duration
}

// ErrConfig marks a Run error in the configuration itself (the TCP API's
// flags and the files they name, or a metrics address off loopback),
// found before anything is served: a usage error, not a failure of the
// machine.
var ErrConfig = errors.New("configuration error")

type configError struct{ err error }

func (e configError) Error() string   { return e.err.Error() }
func (e configError) Unwrap() []error { return []error{e.err, ErrConfig} }

// Run serves the API until ctx is done, then shuts down in order: health
// NOT_SERVING, watch streams ended (server-sent events too), the gRPC and
// HTTP servers stopped (gracefully, within a bound) while listeners drain
// within ShutdownTimeout, and the metrics
// endpoint, when served, last, so that the drain can be watched.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fds, fdReserve := descriptors(cfg.FDReserve)
	api, apiAuth, err := prepareAPI(ctx, cfg.API, cfg.HTTP != "", fdReserve, log)
	if err != nil {
		return configError{err}
	}
	web, err := prepareHTTP(ctx, cfg, fdReserve, log)
	if err != nil {
		return configError{err}
	}
	self, _ := os.Executable() // as it is now: a binary replaced on disk is still found by its path
	act := listenFDs(log)
	defer act.close()
	inh, err := inherit(cfg.Socket)
	if err != nil {
		return err
	}
	shared := false // handed to a new process: what is shared is not removed
	if inh != nil {
		defer func() { // a return before ready: the old daemon serves on
			if !inh.readied {
				inh.fail(errors.New("the new listenerd stopped before serving (its log says why)"))
			}
		}()
	}
	var ln net.Listener
	var lock *os.File
	if inh != nil {
		defer inh.closeUnused()
		ln, lock = inh.unixLn, inh.sockLock
		if ul, ok := ln.(*net.UnixListener); ok {
			if own, err := claimSocket(ul, cfg.Socket); err == nil {
				ln = own // removed at exit only if still this daemon's, as listenUnix's
			}
		}
	} else if act != nil && act.api != nil {
		if ln, lock, err = act.activatedAPI(cfg.Socket, log); err != nil {
			return err
		}
	} else if ln, lock, err = listenUnix(cfg.Socket, log); err != nil {
		return err
	}
	defer lock.Close()
	// Removes the socket if it is still this daemon's (ownSocket), unless
	// an upgrade handed it over (Keep).
	defer ln.Close()
	var tcpLn *gate
	tcpRefusals := newRefusalLog(log.With("api", "tcp"))
	if api != nil && inh != nil {
		tcpLn, err = inh.tcpListener(api, tcpRefusals)
		if err != nil {
			return err
		}
	}
	if api != nil && tcpLn == nil {
		if tcpLn, err = listenTCP(api, tcpRefusals); err != nil {
			return err
		}
	}
	if tcpLn != nil {
		defer tcpLn.Close()
	}
	var httpLn net.Listener
	if web != nil {
		var handed net.Listener
		if inh != nil {
			handed, inh.http = inh.http, nil
		}
		if httpLn, err = listenHTTP(web, handed); err != nil {
			return err
		}
		defer httpLn.Close()
	}
	var met *metrics.Metrics
	var metricsLn net.Listener
	if inh != nil && inh.metrics != nil && cfg.Metrics.Addr != "" {
		met, metricsLn, inh.metrics = metrics.New(), inh.metrics, nil
	} else if met, metricsLn, err = openMetrics(cfg.Metrics); err != nil {
		return err
	}
	if metricsLn != nil {
		defer metricsLn.Close()
	}

	opts := listener.Options{MaxListeners: cfg.MaxListeners, MaxConnections: cfg.MaxConnections, Policy: cfg.Policy,
		FDLimit: fds, FDReserve: fdReserve,
		// The handlers listeners may name: a new handler is one more entry.
		Handlers: []listener.HandlerKind{listener.Discard, listener.Echo, listener.Forward, listener.Stream},
	}
	fdst := newFDStore(log)
	if fdst != nil {
		opts.Bound = fdst.bound
	}
	// A close that begins, for the desired listeners' statuses: the
	// listener drains, and no event says so until it is closed.
	closing := make(chan struct{}, 1)
	opts.Closed = func(id string) {
		if fdst != nil {
			fdst.closed(id)
		}
		select {
		case closing <- struct{}{}:
		default:
		}
	}
	if met != nil {
		opts.ConnClosed = met.ObserveConnection
		opts.QueueLeft = met.ObserveQueueWait
	}
	var saved []json.RawMessage
	var store *state.Store
	if !cfg.Ephemeral && inh != nil && inh.stateLock != nil {
		if store, err = state.Adopt(cfg.StateDir, inh.stateLock); err != nil {
			return err
		}
		inh.stateLock = nil
		defer store.Close()
		opts.Persister = store
	} else if !cfg.Ephemeral {
		store, err = state.Open(cfg.StateDir)
		if err != nil {
			return err
		}
		defer store.Close()
		var version int
		if saved, version, err = store.Load(); err != nil {
			return fmt.Errorf("%w (fix or move the file aside, or start with --ephemeral)", err)
		}
		if saved, err = listener.UpgradeRecords(version, saved); err == nil {
			err = listener.ValidateRecords(saved)
		}
		if err != nil {
			return fmt.Errorf("%w: %s: %v (fix or move the file aside, or start with --ephemeral)", state.ErrCorrupt, store.Path(), err)
		}
		opts.Persister = store
	}
	bus := events.NewBus(events.Options{History: cfg.History, HistoryData: cfg.HistoryData, HistoryBytes: cfg.HistoryBytes,
		WatcherLag: cfg.WatcherLag, MaxWatchers: cfg.MaxWatchers})
	mgr := listener.NewManager(bus, log, opts)
	if inh != nil {
		if err := inh.adopt(ctx, bus, mgr, log); err != nil {
			inh.fail(err)
			mgr.Shutdown(0)
			return fmt.Errorf("upgrade: %w", err)
		}
		defer inh.stop()
	} else if passed := act.takeListeners(); len(saved) > 0 || len(passed) > 0 {
		if fdst != nil { // kept for no listener: the store lets them go
			fdst.forget(unrestored(passed, saved))
		}
		up, failed, err := mgr.RestoreWith(ctx, saved, passed)
		if err != nil {
			mgr.Shutdown(0)
			return fmt.Errorf("restore: %w", err)
		}
		log.Info("listeners restored", "listening", up, "failed", failed, "state", cfg.StateDir)
	}
	nc, stopFleet, err := startFleet(cfg.Fleet, bus, met, log)
	if err != nil {
		mgr.Shutdown(0)
		return err
	}
	// After the listeners closed: their last events are published too.
	defer stopFleet()
	svc := service.New(mgr, log)
	var decl *declare.Reconciler
	if cfg.Listeners != "" {
		decl = newReconciler(cfg, mgr, log)
		if err := decl.Reconcile(ctx); err != nil && !errors.Is(err, declare.ErrNotApplied) {
			mgr.Shutdown(0)
			return configError{fmt.Errorf("--listeners: %w", err)}
		}
	}
	declCtx, declStop := context.WithCancel(ctx)
	var declWG sync.WaitGroup
	defer func() { // on every return: no reconcile outlives Run
		declStop()
		declWG.Wait()
	}()
	if nc != nil && cfg.Fleet.Desired {
		desired := newDesired(cfg.Fleet, cfg.ListenersResync, nc, mgr, closing, log)
		declWG.Go(func() { desired.Run(declCtx) })
		log.Info("listenerd reconciling this host's desired listeners from NATS", "bucket", fleet.Bucket,
			"keys", fleet.HostKeys(fleet.DesiredPrefix, cfg.Fleet.Host))
	}
	if decl != nil {
		declWG.Go(func() {
			if err := decl.Run(declCtx); err != nil {
				log.Error("declared listeners: the file is no longer watched", "file", cfg.Listeners, "err", err)
			}
		})
	}
	up := &upgrader{log: log, self: self, args: os.Args[1:], timeout: cfg.UpgradeTimeout, bus: bus, mgr: mgr,
		socket: cfg.Socket, unixLn: ln, sockLock: lock, store: store, tcpLn: listenerOf(tcpLn), metrics: metricsLn,
		http: httpLn, done: make(chan *handedOver, 1)}
	if up.timeout <= 0 {
		up.timeout = DefaultUpgradeTimeout
	}
	svc.ServeUpgrades(up.upgrade)
	if hln, err := listenHandover(cfg.Socket + ".handover"); err != nil {
		log.Warn("handover not served: its side socket cannot listen", "err", err)
	} else {
		defer func() {
			if !shared {
				os.Remove(cfg.Socket + ".handover")
			}
		}()
		mgr.ServeHandover(hln)
		svc.ServeHandoverAt(cfg.Socket + ".handover")
	}
	srv, hs := newGRPCServer(svc, log, transport{name: "unix",
		limiter: newMutationLimiter(cfg.MutationRate, cfg.MutationBurst)}, met)
	srvs, hss := []*grpc.Server{srv}, []*health.Server{hs}

	var webSrv *webServer
	if web != nil {
		if webSrv, err = startHTTP(web, httpLn, svc, transport{name: "http",
			limiter: newMutationLimiter(cfg.MutationRate, cfg.MutationBurst)}, met, log); err != nil {
			return err
		}
		// Announced before the API socket serves, as metrics are, so that
		// the line is there once the daemon is healthy.
		log.Info("listenerd serving HTTP API", "addr", webSrv.addr.String(), "tls", web.tls != nil,
			"token", web.auth != nil, "mtls", web.clientCert)
		if cfg.Stdout != nil {
			fmt.Fprintf(cfg.Stdout, "listenerd serving HTTP on %s\n", webSrv.url())
		}
	}
	metricsSrv := startMetrics(met, metricsLn, mgr, bus, log, cfg.Stdout)
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("listenerd serving", "socket", cfg.Socket, "boot", bus.BootID(), "policy", cfg.Policy.String(),
		"open_files", fds, "fd_reserve", fdReserve, "max_connections", maxConnections(cfg.MaxConnections, fds, fdReserve))
	if cfg.Stdout != nil {
		fmt.Fprintf(cfg.Stdout, "listenerd serving on unix://%s\n", cfg.Socket)
	}
	if api != nil {
		tsrv, ths := newGRPCServer(svc, log, transport{name: "tcp", creds: api.creds, auth: apiAuth,
			limiter: newMutationLimiter(cfg.MutationRate, cfg.MutationBurst), gate: tcpLn, refusals: tcpRefusals}, met)
		srvs, hss = append(srvs, tsrv), append(hss, ths)
		go func() { errc <- tsrv.Serve(tcpLn) }()
		log.Info("listenerd serving TCP API", "addr", tcpLn.Addr().String(), "tls", api.creds != nil,
			"mtls", api.mTLS, "token", api.token)
		if cfg.Stdout != nil {
			fmt.Fprintf(cfg.Stdout, "listenerd serving on tcp://%s\n", tcpLn.Addr())
		}
	}

	if inh != nil {
		if err := inh.ready(bus, log); err != nil {
			log.Error("upgrade: the old daemon did not hear this one is ready", "err", err)
		}
	}
	status := "serving on unix://" + cfg.Socket
	if api != nil {
		status += " and tcp://" + tcpLn.Addr().String()
	}
	notifyReady(log, inh != nil, status)
	// Healthy: the API's health says SERVING and the listener table
	// answers (a deadlock there stops the pings, and systemd restarts).
	wd := startWatchdog(log, watchdogInterval(log, inh != nil), func() error {
		resp, err := hs.Check(context.Background(), &healthpb.HealthCheckRequest{})
		if err == nil && resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			err = fmt.Errorf("health %v", resp.GetStatus())
		}
		if err == nil {
			mgr.List()
		}
		return err
	})

	var serveErr error
	var ho *handedOver
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case serveErr = <-errc:
			break wait
		case ho = <-up.done:
			break wait
		case <-cfg.Upgrade:
			// SIGUSR2: as UpgradeDaemon with this binary. A failure is
			// logged, and the daemon serves on; a success is in up.done.
			_, _ = up.upgrade(ctx, "")
		}
	}
	wd.Stop()  // no ping once stopping: a shutdown that hangs is killed at TimeoutStopSec=
	declStop() // no reconcile once stopping: the state saved is what the next start restores
	declWG.Wait()
	if ho == nil {
		ho = up.quiesce() // an upgrade under way finishes first
	}
	switch {
	case ho != nil && ho.failed == nil:
		// The new process is the service's main one now: the service
		// is not stopping, and this process says nothing more.
		shared = true
		log.Info("listenerd handed over; draining", "new_pid", ho.pid, "timeout", cfg.ShutdownTimeout)
	case ho != nil:
		log.Info("listenerd handed over to a process that died; draining", "new_pid", ho.pid, "timeout", cfg.ShutdownTimeout)
		notifyStopping(log, "exiting: an upgrade failed after this process stopped accepting")
	default:
		log.Info("listenerd shutting down", "timeout", cfg.ShutdownTimeout)
		notifyStopping(log, fmt.Sprintf("shutting down: draining connections (up to %s)", cfg.ShutdownTimeout))
	}
	for _, hs := range hss {
		hs.Shutdown()
	}
	bus.Close() // ends WatchEvents streams, which would hold GracefulStop
	var wg sync.WaitGroup
	// Accepting stops everywhere at once; connections drain while the API
	// servers stop.
	wg.Go(func() {
		if ho != nil {
			ho.h.Drain(cfg.ShutdownTimeout)
			ho.div.End()
			<-ho.forwarded
			return
		}
		mgr.Shutdown(cfg.ShutdownTimeout)
	})
	for _, srv := range srvs {
		wg.Go(func() { stopGRPC(srv, cfg.ShutdownTimeout) })
	}
	if webSrv != nil {
		wg.Go(func() { webSrv.stop(cfg.ShutdownTimeout) })
	}
	wg.Wait()
	if metricsSrv != nil {
		metricsSrv.Stop(time.Second)
	}
	if ho != nil && ho.failed != nil {
		return ho.failed
	}
	if serveErr != nil && !errors.Is(serveErr, grpc.ErrServerStopped) {
		return fmt.Errorf("serve: %w", serveErr)
	}
	log.Info("listenerd stopped")
	return nil
}

// maxConnections is the daemon-wide connection cap in force: the one
// asked for, or the descriptors the listeners may use (fewer as listeners
// and forwards take their own), or "unlimited".
func maxConnections(asked, fds, reserve int64) string {
	switch {
	case asked > 0:
		return strconv.FormatInt(asked, 10)
	case fds > 0:
		return strconv.FormatInt(fds-reserve, 10)
	}
	return "unlimited"
}

// stopGRPC stops gracefully, or at once when that takes longer than limit.
func stopGRPC(srv *grpc.Server, limit time.Duration) {
	done := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(max(limit, time.Second))
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		srv.Stop()
		<-done
	}
}

// newGRPCServer returns the server of one transport, with the metrics
// interceptors (when met is not nil), logging (each finished call, at
// accessLevel) and recovery outermost, then
// the transport's own options (see transport.options), health and
// reflection.
func newGRPCServer(svc listenerdv1.ListenerServiceServer, log *slog.Logger, tr transport, met *metrics.Metrics) (*grpc.Server, *health.Server) {
	log = log.With("api", tr.name)
	logger := logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		if start, ok := ctx.Value(callStart{}).(time.Time); ok { // a quiet call's line, logged at its end
			fields = withStart(fields, start)
		}
		if tr.refusals != nil && refusedCall(fields) { // anyone may make these: rate-limited
			tr.refusals.refused(slog.Level(lvl), msg, fields...)
			return
		}
		log.Log(ctx, slog.Level(accessLevel(ctx, lvl, fields)), msg, fields...)
	})
	logOpts := []logging.Option{logging.WithLogOnEvents(logging.FinishCall)}
	recoverOpts := []recovery.Option{recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		log.ErrorContext(ctx, "panic in handler", "panic", p)
		return status.Error(codes.Internal, "internal error")
	})}
	srv := grpc.NewServer(append(append(met.ServerOptions(), service.ServerOption(),
		grpc.ChainUnaryInterceptor(
			logging.UnaryServerInterceptor(logger, logOpts...),
			recovery.UnaryServerInterceptor(recoverOpts...),
		),
		grpc.ChainStreamInterceptor(
			quietStreams(logging.StreamServerInterceptor(logger, logOpts...), log),
			recovery.StreamServerInterceptor(recoverOpts...),
		),
	), tr.options()...)...)
	listenerdv1.RegisterListenerServiceServer(srv, svc)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus(listenerdv1.ListenerService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	met.InitServer(srv)
	return srv, hs
}

// quiet is the call made for connections of the stream handler, whose
// log line, when it ends well, goes to debug (see accessLevel).
const quiet = listenerdv1.ListenerService_ServeConnection_FullMethodName

// quietStreams passes the quiet calls by logging (the interceptor logs)
// while debug is off: the middleware builds its fields, formats the start
// time and wraps the stream for every call, about 7 % of the daemon's CPU
// with short connections through the stream handler, for a line that is
// then dropped. A quiet call that fails is logged all the same, once it
// has returned: through logs, which then sees the call's error at once,
// and with the call's own start time and duration (see withStart).
func quietStreams(logs grpc.StreamServerInterceptor, log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if info.FullMethod != quiet || log.Enabled(ss.Context(), slog.LevelDebug) {
			return logs(srv, ss, info, handler)
		}
		start := time.Now()
		err := handler(srv, ss)
		if errors.Is(err, io.EOF) {
			err = nil // as the middleware counts it
		}
		if c := status.Code(err); c == codes.OK || c == codes.Canceled {
			return err // debug: dropped
		}
		return logs(srv, &startedStream{ss, context.WithValue(ss.Context(), callStart{}, start)}, info,
			func(any, grpc.ServerStream) error { return err })
	}
}

// callStart is the context key of a quiet call's start, for its line.
type callStart struct{}

type startedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *startedStream) Context() context.Context { return s.ctx }

// withStart gives the fields of a quiet call's line the call's own start
// time and duration, in the middleware's formats.
func withStart(fields []any, start time.Time) []any {
	out := slices.Clone(fields)
	ms := logging.DurationToTimeMillisFields(time.Since(start))
	for i := 0; i+1 < len(out); i += 2 {
		switch out[i] {
		case "grpc.start_time":
			out[i+1] = start.Format(time.RFC3339)
		case ms[0]:
			out[i+1] = ms[1]
		}
	}
	return out
}

// refusedCall reports whether a finished call's log fields say it was
// refused for its credentials.
func refusedCall(fields []any) bool {
	for i := 0; i+1 < len(fields); i += 2 {
		if fields[i] == "grpc.code" {
			return fields[i+1] == codes.Unauthenticated.String()
		}
	}
	return false
}

// accessLevel is the level of a finished call's log line: reads, watches
// and health checks that succeed (or that their client cancels) go to
// debug, so that a probe every second neither fills the log nor costs each
// call a write. Changes stay at info, and failures at the middleware's
// level for their code.
func accessLevel(ctx context.Context, lvl logging.Level, fields []any) logging.Level {
	if lvl != logging.LevelInfo {
		return lvl
	}
	if m, _ := grpc.Method(ctx); mutating[m] {
		return lvl
	}
	for i := 0; i+1 < len(fields); i += 2 {
		if fields[i] == "grpc.code" {
			// A watch ends when its client cancels it: that is how it
			// ends well.
			if c := fields[i+1]; c == codes.OK.String() || c == codes.Canceled.String() {
				return logging.LevelDebug
			}
			break
		}
	}
	return lvl
}

// checkSocketPath checks the socket directory (checkSocketDir), and each
// directory above it, on the path as given and on the path a link leads
// to: whoever may rename an ancestor can put a directory of their own in
// the socket directory's place. An ancestor anyone may write to is refused;
// one only another user or group may change is warned of.
func checkSocketPath(dir string, log *slog.Logger) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	if err := checkSocketDir(abs); err != nil {
		return err
	}
	paths := []string{abs}
	if real, err := filepath.EvalSymlinks(abs); err == nil && real != abs {
		paths = append(paths, real)
	}
	seen := map[string]bool{}
	for _, start := range paths {
		for p := filepath.Dir(start); !seen[p]; p = filepath.Dir(p) {
			seen[p] = true
			err := checkSocketDir(p)
			var open *openDirError
			if errors.As(err, &open) && open.anyone() {
				return fmt.Errorf("socket directory %s is inside %s, which is mode %04o: anyone could put another directory in its place; choose another --socket", abs, p, open.perm)
			}
			if err != nil {
				log.Warn("a directory above the socket's could be changed by another user", "socket_dir", abs, "err", err)
			}
		}
	}
	return nil
}

// checkSocketDir refuses a socket directory that another user could use
// to put their own socket in the daemon's place: one owned by another uid
// (root aside), one that others may write to without the sticky bit (as
// /tmp has) that keeps them from removing our socket, or a symbolic link
// that another user could point elsewhere. A directory writable by its
// group is fine when the group is this user's own (user private groups,
// where umask 002 makes directories 0775): that refusal is an
// *openDirError.
func checkSocketDir(dir string) error {
	uid := uint32(os.Geteuid())
	owner := func(fi os.FileInfo) (uint32, bool) {
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || st.Uid == uid || st.Uid == 0 {
			return 0, true
		}
		return st.Uid, false
	}
	link, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	if link.Mode()&os.ModeSymlink != 0 {
		if other, ok := owner(link); !ok {
			return fmt.Errorf("socket directory %s is a symbolic link owned by uid %d, not by this user (uid %d) or root: its owner could point it at another socket; remove it, or choose another --socket", dir, other, uid)
		}
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("socket directory %s is not a directory", dir)
	}
	if other, ok := owner(fi); !ok {
		return fmt.Errorf("socket directory %s is owned by uid %d, not by this user (uid %d) or root: its owner could put another socket in the daemon's place; remove it, or choose another --socket", dir, other, uid)
	}
	if fi.Mode()&os.ModeSticky != 0 {
		return nil
	}
	if perm := fi.Mode().Perm(); perm&0o002 != 0 || perm&0o020 != 0 && !ownGroup(fi) {
		return &openDirError{dir, perm}
	}
	return nil
}

// openDirError is a directory others may write to, without the sticky bit.
type openDirError struct {
	dir  string
	perm os.FileMode
}

func (e *openDirError) Error() string {
	return fmt.Sprintf("socket directory %s is mode %04o: other users could replace the daemon's socket, or the directory holding it; chmod go-w it (or +t), or choose another --socket", e.dir, e.perm)
}

// anyone reports that every user, not only a group, may write to it.
func (e *openDirError) anyone() bool { return e.perm&0o002 != 0 }

// ownGroup reports whether fi's group is this user's private group: named
// as the user is.
func ownGroup(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	u, err := user.Current()
	if err != nil {
		return false
	}
	g, err := user.LookupGroupId(strconv.FormatUint(uint64(st.Gid), 10))
	return err == nil && g.Name == u.Username
}

// listenUnix opens the API socket: its directory 0700 (created if needed),
// the socket 0600. A lock file beside the socket says whether a daemon owns
// it: held, another daemon is serving and nothing is touched. Free, a
// socket file left behind is removed only if nothing answers on it (its
// daemon died): the lock file may have been removed under a live daemon
// (a temp cleaner), and a socket may be another program's. The listener
// removes the socket when closed only if it is still the one it created.
// It returns the lock file too, which an upgrade hands over.
func listenUnix(path string, log *slog.Logger) (net.Listener, *os.File, error) {
	dir := filepath.Dir(path)
	// Made here, or found: checked either way, so that one made by someone
	// else between a look and a mkdir is checked too.
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return nil, nil, fmt.Errorf("socket directory: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, nil, fmt.Errorf("socket directory: %w", err)
	}
	if err := checkSocketPath(dir, log); err != nil {
		return nil, nil, err
	}
	lock, err := state.Lock(path + ".lock")
	if errors.Is(err, state.ErrLocked) {
		return nil, nil, fmt.Errorf("another listenerd is serving on %s", path)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("socket lock: %w", err)
	}
	unlock := func() { lock.Close() }
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			unlock()
			return nil, nil, fmt.Errorf("%s exists and is not a socket; not touching it", path)
		}
		if err := checkStale(path); err != nil {
			unlock()
			return nil, nil, err
		}
		if err := os.Remove(path); err != nil {
			unlock()
			return nil, nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		unlock()
		return nil, nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	own, err := claimSocket(ln.(*net.UnixListener), path)
	if err == nil {
		err = os.Chmod(path, 0o600)
	}
	if err != nil {
		own.Close()
		unlock()
		return nil, nil, fmt.Errorf("socket mode: %w", err)
	}
	return own, lock, nil
}

// listenHandover listens on the side socket of handover (SOCK_SEQPACKET,
// mode 0600) beside the API socket. The API socket's lock is held, so
// whatever sits at the path is a leftover of this socket's daemon.
func listenHandover(path string) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false) // removed by Run, once the manager is done with it
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// listenerOf is g as a net.Listener, nil when g is.
func listenerOf(g *gate) net.Listener {
	if g == nil {
		return nil
	}
	return g
}
