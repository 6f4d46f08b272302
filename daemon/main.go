// Command daemon is listenerd: it hosts raw TCP listeners created on demand
// and serves the listenerd.v1 gRPC API on a unix socket.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/listenerd/listenerd/internal/server"
)

func main() {
	os.Exit(execute(os.Args[1:], os.Stdout, os.Stderr, os.LookupEnv, serve))
}

// serve runs the daemon until SIGTERM or SIGINT.
func serve(s *settings) error {
	cfg := s.cfg
	cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: s.level}))
	cfg.Stdout = os.Stdout

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
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
	return server.Run(ctx, cfg)
}
