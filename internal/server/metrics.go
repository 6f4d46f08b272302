package server

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/metrics"
)

// MetricsConfig is the optional Prometheus endpoint.
type MetricsConfig struct {
	Addr        string // host:port serving /metrics; "" serves none. Port 0 picks one.
	AllowRemote bool   // allow Addr off loopback: the endpoint has no authentication
}

// openMetrics binds the metrics endpoint, so that a bad address fails the
// start, and returns its registry; both nil when it is off.
func openMetrics(cfg MetricsConfig) (*metrics.Metrics, net.Listener, error) {
	if cfg.Addr == "" {
		return nil, nil, nil
	}
	ln, err := metrics.Listen(cfg.Addr, cfg.AllowRemote)
	var refused *metrics.AddrError
	if errors.As(err, &refused) {
		return nil, nil, configError{err}
	}
	if err != nil {
		return nil, nil, err
	}
	return metrics.New(), ln, nil
}

// startMetrics collects mgr and bus into met and serves it on ln; nil when
// met is nil. The endpoint is announced on stdout as
// "listenerd serving metrics on http://ADDR/metrics".
func startMetrics(met *metrics.Metrics, ln net.Listener, mgr *listener.Manager, bus *events.Bus, log *slog.Logger, stdout io.Writer) *metrics.Server {
	if met == nil {
		return nil
	}
	met.Collect(mgr, bus)
	s := met.Start(ln, log)
	log.Info("listenerd serving metrics", "addr", ln.Addr().String())
	if stdout != nil {
		fmt.Fprintf(stdout, "listenerd serving metrics on http://%s/metrics\n", ln.Addr())
	}
	return s
}
