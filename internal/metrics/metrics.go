// Package metrics serves the daemon's Prometheus metrics: per-listener
// connection counts, rejections by reason, bytes and connection durations,
// the event bus's watchers and slow-watcher cuts, and the gRPC server's
// own metrics (go-grpc-middleware's Prometheus provider).
//
// The listener counters cost nothing on the accept path: a custom collector
// reads the manager's snapshots (listener.Info, plain atomic loads) when
// Prometheus scrapes. Only the duration histogram is fed as connections end,
// through listener.Options.ConnClosed, on the connection's own goroutine.
package metrics

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/version"
)

const namespace = "listenerd"

// DurationBuckets are the connection-duration histogram's upper bounds, in
// seconds: from a millisecond (a probe, a rejected client) to an hour.
var DurationBuckets = []float64{.001, .005, .01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 900, 3600}

// Source is what the collector reads at scrape time: the listener manager.
type Source interface {
	// List returns every listener's snapshot.
	List() ([]listener.Info, uint64)
	// Get finds a listener by id; an error means it is gone.
	Get(ref string) (*listener.Listener, error)
}

// Metrics is the daemon's metrics registry. Create it with New before the
// manager (its ObserveConnection is the manager's ConnClosed hook), then
// Collect the manager and the bus, and Start serving.
type Metrics struct {
	reg  *prometheus.Registry
	grpc *grpcprom.ServerMetrics

	// durations holds one histogram per listener id, created on the
	// listener's first closed connection; the collector drops those of
	// listeners that are gone.
	durations sync.Map // string → prometheus.Histogram

	// queueWait is how long connections waited in listeners' queues
	// (overflow QUEUE), served or rejected, across the daemon.
	queueWait prometheus.Histogram
}

// New returns a registry with the Go runtime, process and gRPC server
// metrics.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		grpc: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
			grpcprom.WithHistogramBuckets([]float64{.0005, .001, .005, .01, .05, .1, .5, 1, 5}))),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace, Name: "queue_wait_seconds",
			Help:    "How long connections waited in a listener's queue (overflow QUEUE) before they were served or rejected.",
			Buckets: DurationBuckets}),
	}
	m.reg.MustRegister(
		buildInfo(version.Get()),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.grpc,
		m.queueWait,
	)
	return m
}

// buildInfo is the gauge listenerd_build_info, 1, whose labels name the
// build (Prometheus's convention for versions).
func buildInfo(v version.Info) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "build_info",
		Help: "Which build of listenerd runs: always 1, the build in the labels.",
		ConstLabels: prometheus.Labels{"version": v.Version, "revision": v.Revision,
			"dirty": strconv.FormatBool(v.Dirty), "goversion": v.GoVersion}})
	g.Set(1)
	return g
}

// Registry returns the registry, for tests and extra collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ObserveConnection records how long a connection of a listener was open.
// It is the manager's ConnClosed hook: lock-free once the listener has its
// histogram.
func (m *Metrics) ObserveConnection(listenerID string, d time.Duration) {
	h, ok := m.durations.Load(listenerID)
	if !ok {
		h, _ = m.durations.LoadOrStore(listenerID, prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "connection_duration_seconds", Buckets: DurationBuckets}))
	}
	h.(prometheus.Histogram).Observe(d.Seconds())
}

// ObserveQueueWait records how long a connection waited in a listener's
// queue. It is the manager's QueueLeft hook.
func (m *Metrics) ObserveQueueWait(_ string, d time.Duration) { m.queueWait.Observe(d.Seconds()) }

// Collect registers the collector of src's listeners and bus's counters.
// Call it once.
func (m *Metrics) Collect(src Source, bus *events.Bus) {
	m.reg.MustRegister(&collector{m: m, src: src, bus: bus})
}

// ServerOptions returns the gRPC server options that record the server
// metrics: interceptors meant to be outermost, so that calls refused by
// authentication or the rate limit are counted too. A nil Metrics returns
// none.
func (m *Metrics) ServerOptions() []grpc.ServerOption {
	if m == nil {
		return nil
	}
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(m.grpc.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(m.grpc.StreamServerInterceptor()),
	}
}

// InitServer creates the gRPC series of every method srv serves at zero,
// so that rates work from the first call. A nil Metrics does nothing.
func (m *Metrics) InitServer(srv *grpc.Server) {
	if m != nil {
		m.grpc.InitializeMetrics(srv)
	}
}

// collector reads the listeners and the bus when Prometheus scrapes.
type collector struct {
	m   *Metrics
	src Source
	bus *events.Bus
}

var (
	listenerLabels = []string{"listener", "name"}

	descInfo = prometheus.NewDesc(namespace+"_listener_info",
		"A listener: its address, handler and state (always 1).",
		append(listenerLabels, "address", "mode", "state"), nil)
	descActive = prometheus.NewDesc(namespace+"_listener_active_connections",
		"Connections open now.", listenerLabels, nil)
	descMax = prometheus.NewDesc(namespace+"_listener_max_connections",
		"The listener's max_connections; absent while unlimited.", listenerLabels, nil)
	descQueued = prometheus.NewDesc(namespace+"_listener_queued_connections",
		"Connections waiting in the listener's queue now (overflow QUEUE).", listenerLabels, nil)
	descAccepted = prometheus.NewDesc(namespace+"_listener_accepted_connections_total",
		"Connections accepted and handled.", listenerLabels, nil)
	descRejected = prometheus.NewDesc(namespace+"_listener_rejected_connections_total",
		"Connections accepted and closed at once, by reason.", append(listenerLabels, "reason"), nil)
	descBytes = prometheus.NewDesc(namespace+"_listener_bytes_total",
		"Bytes read from clients (direction in) and written to them (direction out).", append(listenerLabels, "direction"), nil)
	descFaults = prometheus.NewDesc(namespace+"_listener_faults",
		"Faults in force on the listener now.", listenerLabels, nil)
	descFaultsApplied = prometheus.NewDesc(namespace+"_listener_faults_applied_total",
		"Times a fault applied to a connection (a refused or delayed accept included).", listenerLabels, nil)
	descFaultCloses = prometheus.NewDesc(namespace+"_listener_fault_closes_total",
		"Connections a fault closed or reset.", listenerLabels, nil)
	descDuration = prometheus.NewDesc(namespace+"_connection_duration_seconds",
		"How long connections were open, from accept to close.", listenerLabels, nil)

	descWatchers = prometheus.NewDesc(namespace+"_watchers",
		"WatchEvents streams open.", nil, nil)
	descPublished = prometheus.NewDesc(namespace+"_events_published_total",
		"Events published since the daemon started (the head sequence).", nil, nil)
	descCuts = prometheus.NewDesc(namespace+"_watchers_cut_total",
		"Watchers cut loose (RESOURCE_EXHAUSTED) for falling too far behind.", nil, nil)
	descDropped = prometheus.NewDesc(namespace+"_watch_events_dropped_total",
		"Events not sent to the watchers that were cut, counted at the cut; a client that resumes gets them from the history while it holds them.", nil, nil)
	descHistoryEvents = prometheus.NewDesc(namespace+"_history_events",
		"Events the history holds for watchers to resume from.", nil, nil)
	descHistoryBytes = prometheus.NewDesc(namespace+"_history_bytes",
		"Bytes the history holds, every event by its size and connection data by its length.", nil, nil)
	descHistoryLimit = prometheus.NewDesc(namespace+"_history_bytes_limit",
		"The history's byte budget (--history-bytes).", nil, nil)
	descFDLimit = prometheus.NewDesc(namespace+"_descriptors_limit",
		"The daemon's open-file limit (RLIMIT_NOFILE).", nil, nil)
	descFDReserve = prometheus.NewDesc(namespace+"_descriptors_reserved",
		"Descriptors kept for the API and the daemon, out of the listeners' reach (--fd-reserve).", nil, nil)
	descFDHeld = prometheus.NewDesc(namespace+"_descriptors_held",
		"Descriptors held by listeners, connections, upstreams and splice pipes, of the limit less the reserve.", nil, nil)
)

// capsSource is a Source that has daemon-wide caps (the manager).
type capsSource interface {
	Caps() listener.Caps
}

// rejectReasons are the reason label values, indexed by events.RejectReason.
var rejectReasons = [events.NumRejectReasons]string{
	events.RejectUnspecified:    "unspecified",
	events.RejectMaxConnections: "max_connections",
	events.RejectDeniedByACL:    "denied_by_acl",
	events.RejectRateLimit:      "rate_limit",
	events.RejectPerSourceLimit: "per_source_limit",
	events.RejectDaemonLimit:    "daemon_limit",
	events.RejectQueueFull:      "queue_full",
	events.RejectQueueTimeout:   "queue_timeout",
	events.RejectListenerClosed: "listener_closed",
	events.RejectKicked:         "kicked",
	events.RejectFault:          "fault",
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInfo, descActive, descQueued, descMax, descAccepted, descRejected, descBytes,
		descDuration, descWatchers, descPublished, descCuts, descDropped, descFaults, descFaultsApplied, descFaultCloses,
		descHistoryEvents, descHistoryBytes, descHistoryLimit, descFDLimit, descFDReserve, descFDHeld} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	infos, _ := c.src.List()
	present := make(map[string]bool, len(infos))
	for i := range infos {
		in := &infos[i]
		present[in.ID] = true
		lv := []string{in.ID, in.Name}
		ch <- prometheus.MustNewConstMetric(descInfo, prometheus.GaugeValue, 1,
			in.ID, in.Name, in.Bound, in.Spec.Handler.Name(), in.State.String())
		ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(in.Active), lv...)
		ch <- prometheus.MustNewConstMetric(descQueued, prometheus.GaugeValue, float64(in.Queued), lv...)
		if n, ok := in.Spec.Limits.MaxConnections.Max(); ok {
			ch <- prometheus.MustNewConstMetric(descMax, prometheus.GaugeValue, float64(n), lv...)
		}
		ch <- prometheus.MustNewConstMetric(descAccepted, prometheus.CounterValue, float64(in.Accepted), lv...)
		for r := events.RejectMaxConnections; r < events.NumRejectReasons; r++ {
			ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(in.RejectedBy[r]), in.ID, in.Name, rejectReasons[r])
		}
		if n := in.RejectedBy[events.RejectUnspecified]; n > 0 {
			ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(n), in.ID, in.Name, rejectReasons[events.RejectUnspecified])
		}
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(in.BytesIn), in.ID, in.Name, "in")
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(in.BytesOut), in.ID, in.Name, "out")
		ch <- prometheus.MustNewConstMetric(descFaults, prometheus.GaugeValue, float64(in.Faults.InForce), lv...)
		ch <- prometheus.MustNewConstMetric(descFaultsApplied, prometheus.CounterValue, float64(in.Faults.Applied), lv...)
		ch <- prometheus.MustNewConstMetric(descFaultCloses, prometheus.CounterValue, float64(in.Faults.Closes), lv...)
		ch <- c.durationOf(in.ID, lv)
	}
	// Histograms of listeners gone from the manager go with them. One
	// missing from the snapshot may be newer than it: ask again.
	c.m.durations.Range(func(k, _ any) bool {
		if id := k.(string); !present[id] {
			if _, err := c.src.Get(id); errors.Is(err, listener.ErrNotFound) {
				c.m.durations.Delete(id)
			}
		}
		return true
	})

	st := c.bus.Stats()
	ch <- prometheus.MustNewConstMetric(descWatchers, prometheus.GaugeValue, float64(st.Watchers))
	ch <- prometheus.MustNewConstMetric(descPublished, prometheus.CounterValue, float64(st.Head))
	ch <- prometheus.MustNewConstMetric(descCuts, prometheus.CounterValue, float64(st.SlowCuts))
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(st.Unsent))
	ch <- prometheus.MustNewConstMetric(descHistoryEvents, prometheus.GaugeValue, float64(st.Held))
	ch <- prometheus.MustNewConstMetric(descHistoryBytes, prometheus.GaugeValue, float64(st.HeldBytes))
	ch <- prometheus.MustNewConstMetric(descHistoryLimit, prometheus.GaugeValue, float64(st.Budget))
	if cs, ok := c.src.(capsSource); ok {
		if caps := cs.Caps(); caps.FDLimit > 0 {
			ch <- prometheus.MustNewConstMetric(descFDLimit, prometheus.GaugeValue, float64(caps.FDLimit))
			ch <- prometheus.MustNewConstMetric(descFDReserve, prometheus.GaugeValue, float64(caps.FDReserve))
			ch <- prometheus.MustNewConstMetric(descFDHeld, prometheus.GaugeValue, float64(caps.FDHeld))
		}
	}
}

// durationOf returns the listener's duration histogram with its labels, or
// an empty one before its first connection closed.
func (c *collector) durationOf(id string, lv []string) prometheus.Metric {
	var count uint64
	var sum float64
	buckets := make(map[float64]uint64, len(DurationBuckets))
	if h, ok := c.m.durations.Load(id); ok {
		var pb dto.Metric
		if err := h.(prometheus.Histogram).Write(&pb); err == nil {
			hist := pb.GetHistogram()
			count, sum = hist.GetSampleCount(), hist.GetSampleSum()
			for _, b := range hist.GetBucket() {
				buckets[b.GetUpperBound()] = b.GetCumulativeCount()
			}
		}
	}
	for _, b := range DurationBuckets {
		if _, ok := buckets[b]; !ok {
			buckets[b] = 0
		}
	}
	return prometheus.MustNewConstHistogram(descDuration, count, sum, buckets, lv...)
}

// AddrError is an address the endpoint refuses to serve on: one CheckAddr
// refuses, or a host name that bound off loopback. The flag is wrong, not
// the machine.
type AddrError struct{ Err error }

func (e *AddrError) Error() string { return e.Err.Error() }
func (e *AddrError) Unwrap() error { return e.Err }

// CheckAddr checks a --metrics address: host:port with an explicit host,
// on loopback unless allowRemote. A host name is checked once bound, by
// Listen. Its errors are *AddrError.
func CheckAddr(addr string, allowRemote bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return &AddrError{fmt.Errorf("%q is not host:port: %v", addr, err)}
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return &AddrError{fmt.Errorf("%q: bad port %q", addr, port)}
	}
	if allowRemote {
		return nil
	}
	if host == "" {
		return &AddrError{fmt.Errorf("%q listens on every interface; give a loopback host (e.g. 127.0.0.1%s) or allow it with --metrics-allow-remote", addr, addr)}
	}
	if ip, err := netip.ParseAddr(host); err == nil && !ip.Unmap().IsLoopback() {
		return &AddrError{fmt.Errorf("%s is not a loopback address; the metrics endpoint has no authentication, so allow it with --metrics-allow-remote", host)}
	}
	return nil
}

// checkBound refuses, unless allowRemote, an endpoint that addr's host
// name bound off loopback.
func checkBound(addr string, bound net.Addr, allowRemote bool) error {
	if allowRemote {
		return nil
	}
	if ap, err := netip.ParseAddrPort(bound.String()); err == nil && ap.Addr().Unmap().IsLoopback() {
		return nil
	}
	host, _, _ := net.SplitHostPort(addr)
	return &AddrError{fmt.Errorf("%s is bound to %s, not loopback; allow it with --metrics-allow-remote", host, bound)}
}

// Listen binds the metrics endpoint, refusing an address off loopback
// unless allowRemote (see CheckAddr). A refused address is an *AddrError;
// any other error is the machine's (the port is taken, say).
func Listen(addr string, allowRemote bool) (net.Listener, error) {
	if err := CheckAddr(addr, allowRemote); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	ln, err := net.Listen(listener.ListenNetwork(addr), addr)
	var dns *net.DNSError
	if errors.As(err, &dns) { // a name that does not resolve: the flag is wrong
		return nil, fmt.Errorf("metrics: %w", &AddrError{err})
	}
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if err := checkBound(addr, ln.Addr(), allowRemote); err != nil {
		ln.Close()
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return ln, nil
}
