// Command daemon is listenerd: it hosts raw TCP listeners created on demand
// and serves the listenerd.v1 gRPC API on a unix socket.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/listenerd/listenerd/internal/metrics"
	"github.com/listenerd/listenerd/internal/paths"
	"github.com/listenerd/listenerd/internal/server"
)

func main() {
	cfg, level, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "listenerd: %v (see --help)\n", err)
		os.Exit(2)
	}
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cfg.Stdout = os.Stdout

	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		cfg.Log.Info("signal received; shutting down (again to exit at once)", "signal", sig)
		cancel()
		<-sigs
		fmt.Fprintln(os.Stderr, "listenerd: second signal; exiting now")
		os.Exit(1)
	}()

	// SIGUSR2 upgrades to the binary at this one's path (nginx's signal),
	// for init systems: ctl upgrade is the same with a reply.
	upgrade := make(chan struct{}, 1)
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	go func() {
		for range usr2 {
			select {
			case upgrade <- struct{}{}:
			default:
			}
		}
	}()
	cfg.Upgrade = upgrade

	if err := server.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "listenerd:", err)
		if errors.Is(err, server.ErrConfig) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// parseFlags reads the command line. --help prints the usage to stdout
// and returns flag.ErrHelp; any other mistake is one line, without the
// usage.
func parseFlags(args []string) (server.Config, slog.Level, error) {
	fs := flag.NewFlagSet("listenerd", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are printed by main, on one line
	fs.Usage = func() {}     // and the usage only for --help
	var cfg server.Config
	var level slog.Level
	fs.StringVar(&cfg.Socket, "socket", paths.DefaultSocket(), "API unix socket path (env "+paths.SocketEnv+")")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "how long connections may drain on SIGTERM/SIGINT")
	fs.IntVar(&cfg.History, "history", server.DefaultHistory, "events held in memory for watch resume")
	fs.Int64Var(&cfg.HistoryBytes, "history-bytes", server.DefaultHistoryBytes, "bytes the event history holds, every event counted by its size and connection data by its length (beyond, the oldest events go)")
	fs.Int64Var(&cfg.HistoryData, "history-data", server.DefaultHistoryData, "bytes of connection data the event history holds, at most --history-bytes (beyond, the oldest data events keep their length but lose their bytes)")
	fs.IntVar(&cfg.WatcherLag, "watch-queue", server.DefaultWatcherLag, "events a watcher may fall behind before its stream ends with RESOURCE_EXHAUSTED")
	fs.IntVar(&cfg.MaxWatchers, "max-watchers", server.DefaultMaxWatchers, "concurrent WatchEvents streams")
	fs.StringVar(&cfg.StateDir, "state-dir", paths.StateDir(), "directory where listener specs persist")
	fs.BoolVar(&cfg.Ephemeral, "ephemeral", false, "keep no state: listeners are neither saved nor restored")
	fs.IntVar(&cfg.MaxListeners, "max-listeners", 0, "listeners at once (0: unlimited)")
	fs.Int64Var(&cfg.MaxConnections, "max-connections", 0, "open connections across all listeners (0: as many as the open-file limit less --fd-reserve allows)")
	fs.Int64Var(&cfg.FDReserve, "fd-reserve", server.DefaultFDReserve(), "file descriptors kept for the API and the daemon, out of the listeners' reach (an eighth of the open-file limit, at least 32, at most half)")
	fs.TextVar(&level, "log-level", slog.LevelInfo, "log level: debug, info, warn, error")
	fs.StringVar(&cfg.Metrics.Addr, "metrics", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464; port 0 picks one, printed); loopback only unless --metrics-allow-remote")
	fs.BoolVar(&cfg.Metrics.AllowRemote, "metrics-allow-remote", false, "allow --metrics off loopback (the endpoint has no authentication: firewall it)")
	checkSecurity := addSecurityFlags(fs, &cfg)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(os.Stdout)
			fmt.Fprintln(os.Stdout, "Usage: listenerd [flags]\n\nHosts raw TCP listeners controlled over gRPC (see ctl). Flags:")
			fs.PrintDefaults()
		}
		return cfg, level, err
	}
	if err := checkSecurity(); err != nil {
		return cfg, level, err
	}
	if cfg.Metrics.Addr != "" {
		if err := metrics.CheckAddr(cfg.Metrics.Addr, cfg.Metrics.AllowRemote); err != nil {
			return cfg, level, fmt.Errorf("--metrics: %w", err)
		}
	}
	if fs.NArg() > 0 {
		return cfg, level, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if err := cfg.Check(); err != nil {
		return cfg, level, err
	}
	return cfg, level, nil
}
