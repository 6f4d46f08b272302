package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/listenerd/listenerd/internal/config"
	"github.com/listenerd/listenerd/internal/fleet"
	"github.com/listenerd/listenerd/internal/paths"
	"github.com/listenerd/listenerd/internal/server"
)

// settings is what the flags fill: the server's configuration and what
// main turns into it.
type settings struct {
	cfg             server.Config
	level           slog.Level
	configFile      string
	ports, hosts    string
	allowPrivileged bool
}

// declareFlags declares every setting of the daemon on fs, one line each:
// a new setting is one more line (and the environment variable
// LISTENERD_<NAME> and the config file's key <name> come with it). Mark
// with config.Secret anything that holds or names a credential.
func declareFlags(fs *pflag.FlagSet, s *settings) {
	cfg := &s.cfg
	fs.StringVar(&s.configFile, "config", "", "read settings from this YAML file (keys are these flags' names; flags and the environment win over it)")
	fs.StringVar(&cfg.Socket, "socket", paths.DefaultSocket(), "API unix socket path")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "how long connections may drain on SIGTERM/SIGINT")
	fs.IntVar(&cfg.History, "history", server.DefaultHistory, "events held in memory for watch resume")
	fs.Int64Var(&cfg.HistoryBytes, "history-bytes", server.DefaultHistoryBytes, "bytes the event history holds, every event counted by its size and connection data by its length (beyond, the oldest events go)")
	fs.Int64Var(&cfg.HistoryData, "history-data", server.DefaultHistoryData, "bytes of connection data the event history holds, at most --history-bytes (beyond, the oldest data events keep their length but lose their bytes)")
	fs.IntVar(&cfg.WatcherLag, "watch-queue", server.DefaultWatcherLag, "events a watcher may fall behind before its stream ends with RESOURCE_EXHAUSTED")
	fs.IntVar(&cfg.MaxWatchers, "max-watchers", server.DefaultMaxWatchers, "concurrent WatchEvents streams")
	fs.StringVar(&cfg.StateDir, "state-dir", paths.StateDir(), "directory where listener specs persist")
	fs.BoolVar(&cfg.Ephemeral, "ephemeral", false, "keep no state: listeners are neither saved nor restored")
	fs.StringVar(&cfg.Listeners, "listeners", "", "declared listeners: a YAML file of the listeners this daemon must have, by name, made true at start and whenever it changes (see README, Declared listeners)")
	fs.DurationVar(&cfg.ListenersResync, "listeners-resync", time.Minute, "reconcile the --listeners file (or the NATS bucket's desired listeners) this often even when it does not change, putting back changes made through the API and retrying failed ones (0: only when it changes)")
	fs.IntVar(&cfg.MaxListeners, "max-listeners", 0, "listeners at once (0: unlimited)")
	fs.Int64Var(&cfg.MaxConnections, "max-connections", 0, "open connections across all listeners (0: as many as the open-file limit less --fd-reserve allows)")
	fs.Int64Var(&cfg.FDReserve, "fd-reserve", server.DefaultFDReserve(), "file descriptors kept for the API and the daemon, out of the listeners' reach (an eighth of the open-file limit, at least 32, at most half)")
	fs.Var((*levelValue)(&s.level), "log-level", "log level: debug, info, warn, error")
	fs.StringVar(&cfg.Metrics.Addr, "metrics", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464; port 0 picks one, printed); loopback only unless --metrics-allow-remote")
	fs.BoolVar(&cfg.Metrics.AllowRemote, "metrics-allow-remote", false, "allow --metrics off loopback (the endpoint has no authentication: firewall it)")
	fs.StringVar(&cfg.API.Listen, "api-listen", "", "also serve the API on this TCP host:port (needs --token-file or --client-ca; off loopback also --tls-cert/--tls-key); port 0 picks one, printed as tcp://ADDR")
	fs.StringVar(&cfg.HTTP, "http", "", "also serve the API as HTTP/JSON and the dashboard on this host:port (events as server-sent events at /v1/events, OpenAPI at /openapi.json; needs --token-file or --client-ca; off loopback also --tls-cert/--tls-key); port 0 picks one, printed as http://ADDR/")
	fs.StringVar(&cfg.API.TLSCert, "tls-cert", "", "PEM certificate of the TCP and HTTP APIs (with --tls-key)")
	fs.StringVar(&cfg.API.TLSKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&cfg.API.ClientCA, "client-ca", "", "PEM CA bundle: TCP and HTTP API clients must present a certificate it signed (mTLS)")
	fs.StringVar(&cfg.API.TokenFile, "token-file", "", "file holding the bearer token TCP and HTTP API clients must send (trimmed; never logged)")
	fs.Float64Var(&cfg.MutationRate, "api-rate", server.DefaultMutationRate, "mutating RPCs (create, update, close, kick, rebind) a second on each transport, beyond which they fail with RESOURCE_EXHAUSTED (0: no limit)")
	fs.IntVar(&cfg.MutationBurst, "api-burst", server.DefaultMutationBurst, "burst of --api-rate")
	fs.StringVar(&cfg.Fleet.URL, "nats", "", "publish every event to NATS JetStream at this URL (nats://HOST:PORT, or a comma-separated list; off loopback TLS: --nats-ca or tls://), stream "+fleet.Stream+", subjects "+fleet.Prefix+".<host>.<listener>.<kind>")
	fs.StringVar(&cfg.Fleet.Creds, "nats-creds", "", "NATS credentials file (JWT and NKey seed) for --nats")
	fs.StringVar(&cfg.Fleet.TokenFile, "nats-token-file", "", "file holding the NATS token for --nats (trimmed; never logged)")
	fs.StringVar(&cfg.Fleet.CA, "nats-ca", "", "PEM CA bundle: --nats over TLS to servers it signed")
	fs.StringVar(&cfg.Fleet.Host, "host-name", defaultHostName(), "this daemon's name in the fleet's subjects (one NATS subject token: no '.', '*', '>' or spaces; default: the host name up to its first dot)")
	fs.BoolVar(&cfg.Fleet.Desired, "nats-desired", true, "with --nats, reconcile this host's desired listeners from the NATS bucket "+fleet.Bucket+" (keys "+fleet.DesiredPrefix+".<host-name>.<name>; false: only publish events, e.g. beside --listeners)")
	fs.IntVar(&cfg.Fleet.Replicas, "nats-replicas", 1, "replicas of the events stream when listenerd creates it (1-5)")
	fs.IntVar(&cfg.Fleet.Pack, "nats-pack", fleet.DefaultPack, "events of one subject published together that one message holds at most (1: a message an event; up to "+fmt.Sprint(fleet.MaxPack)+")")
	fs.DurationVar(&cfg.Fleet.MaxAge, "nats-max-age", fleet.DefaultMaxAge, "how long the events stream keeps an event, when listenerd creates it")
	fs.DurationVar(&cfg.Fleet.Heartbeat, "nats-heartbeat", fleet.DefaultHeartbeat, "with --nats-desired, write this host's key "+fleet.HostPrefix+".<host-name> in the bucket this often (ctl fleet ls shows a host gone after "+fmt.Sprint(fleet.MissedBeats)+" missed beats); positive")
	fs.StringVar(&s.ports, "allow-ports", "", "ports listeners may bind, as a list of ports and ranges (e.g. 0,8000-8999; 0 allows ephemeral ports); empty: any")
	fs.StringVar(&s.hosts, "allow-hosts", "", "addresses listeners may bind, as a list of IPs and CIDRs (e.g. 127.0.0.1,::1,10.0.0.0/8); 0.0.0.0 and :: only when listed; empty: any")
	fs.BoolVar(&s.allowPrivileged, "allow-privileged", true, "allow ports below 1024 when the process may bind them (false refuses them whatever the rights)")

	config.Secret(fs, "token-file")
	config.Secret(fs, "tls-key")
	config.Secret(fs, "nats-creds")
	config.Secret(fs, "nats-token-file")
	config.Example(fs, "nats", "nats://127.0.0.1:4222")
	config.Example(fs, "host-name", "web-1")
	config.List(fs, "allow-ports")
	config.List(fs, "allow-hosts")
	config.Example(fs, "log-level", "debug, info, warn or error")
}

// defaultHostName is the host name up to its first dot, "localhost" when
// the system has none.
func defaultHostName() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	h, _, _ = strings.Cut(h, ".")
	return h
}

// levelValue is a slog.Level as a flag: debug, info, warn, error.
type levelValue slog.Level

func (l *levelValue) Set(s string) error {
	if (*slog.Level)(l).UnmarshalText([]byte(s)) != nil {
		return errors.New("not a log level")
	}
	return nil
}
func (l *levelValue) String() string { return strings.ToLower(slog.Level(*l).String()) }
func (l *levelValue) Type() string   { return "level" }
