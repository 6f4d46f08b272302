package server

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/fleet"
	"github.com/listenerd/listenerd/internal/metrics"
	"github.com/listenerd/listenerd/internal/service"
)

// FleetConfig is the optional publishing of events to NATS JetStream.
type FleetConfig struct {
	fleet.ConnConfig               // --nats and its credentials; URL "" publishes nothing
	Host             string        // --host-name: the subjects' host token
	Replicas         int           // --nats-replicas of the stream when it is created
	MaxAge           time.Duration // --nats-max-age of the stream when it is created
	Pack             int           // --nats-pack: events of one subject a message holds at most
	// Heartbeat: how often the host key is written in the bucket
	// (--nats-heartbeat), while the desired listeners are reconciled.
	Heartbeat time.Duration
	// Desired: reconcile this host's desired listeners in the bucket
	// (--nats-desired).
	Desired bool
}

// fleetFlush bounds how long a shutdown waits for the last events'
// acknowledgements.
const fleetFlush = 5 * time.Second

func (c FleetConfig) check() error {
	if err := c.ConnConfig.Check(); err != nil || !c.Enabled() {
		return err
	}
	if err := fleet.CheckToken("--host-name", c.Host); err != nil {
		return err
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return fmt.Errorf("--nats-replicas %d: 1 to 5", c.Replicas)
	}
	if c.Pack < 0 || c.Pack > fleet.MaxPack {
		return fmt.Errorf("--nats-pack %d: 1 to %d (0: %d)", c.Pack, fleet.MaxPack, fleet.DefaultPack)
	}
	if c.MaxAge < 0 {
		return fmt.Errorf("--nats-max-age %v: must not be negative (0: %v)", c.MaxAge, fleet.DefaultMaxAge)
	}
	if c.Heartbeat <= 0 {
		return fmt.Errorf("--nats-heartbeat %v: must be positive (default %v)", c.Heartbeat, fleet.DefaultHeartbeat)
	}
	return nil
}

// fleetPublisher publishes bus's events when --nats asks for it; stop
// flushes and closes, and is a no-op when nothing was started. A NATS
// that is down does not keep the daemon from starting: the publisher
// catches up when it comes.
func startFleet(cfg FleetConfig, bus *events.Bus, met *metrics.Metrics, log *slog.Logger) (nc *nats.Conn, stop func(), err error) {
	if !cfg.Enabled() {
		return nil, func() {}, nil
	}
	cfg.Name = "listenerd " + cfg.Host
	nc, err = cfg.Connect(nats.RetryOnFailedConnect(true), nats.ErrorHandler(natsErrors(log)))
	if err != nil {
		return nil, nil, fmt.Errorf("--nats: %w", err)
	}
	boot := bus.BootID()
	pub, err := fleet.Start(nc, bus, fleet.Options{Host: cfg.Host, Replicas: cfg.Replicas, MaxAge: cfg.MaxAge, Pack: cfg.Pack, Log: log,
		Encode: func(dst []byte, e *events.Event) ([]byte, error) { return service.AppendEventJSON(dst, e, boot) }})
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	if met != nil {
		met.CollectFleet(pub)
	}
	log.Info("listenerd publishing events to NATS JetStream", "stream", fleet.Stream, "subjects", fleet.HostSubjects(cfg.Host))
	return nc, func() {
		pub.Stop(fleetFlush)
		nc.Close()
	}, nil
}

// natsErrors logs what the NATS client reports asynchronously (a slow
// consumer; a watch's consumer that stopped answering while NATS was
// away), as a warning: without it the client writes a bare line to
// stderr, outside the daemon's log. The subscription's subject is not
// read: the client rewrites it, under a lock of its own, when an ordered
// consumer (a bucket's watch) starts again.
func natsErrors(log *slog.Logger) nats.ErrHandler {
	return func(_ *nats.Conn, _ *nats.Subscription, err error) {
		log.Warn("nats: asynchronous error", "err", err)
	}
}
