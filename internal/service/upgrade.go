package service

import (
	"context"
	"errors"

	"google.golang.org/grpc/peer"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/listener"
)

// Upgrade errors, mapped in the error table.
var (
	// ErrUpgradeFailed: the new daemon did not take over; this one serves on.
	ErrUpgradeFailed = errors.New("upgrade failed")
	// ErrUpgradeBusy: an upgrade is under way already.
	ErrUpgradeBusy = errors.New("an upgrade is under way")
)

// Upgraded is what an upgrade reports once the new process serves.
type Upgraded struct {
	PID       int
	Binary    string
	BootID    string
	Head      uint64
	Listeners int
	Draining  int64
}

// Upgrader replaces the daemon process with binary ("": its own); the
// server provides it.
type Upgrader func(ctx context.Context, binary string) (Upgraded, error)

// ServeUpgrades makes UpgradeDaemon call up.
func (s *Service) ServeUpgrades(up Upgrader) { s.upgrade = up }

// UpgradeDaemon implements ListenerService.
func (s *Service) UpgradeDaemon(ctx context.Context, req *listenerdv1.UpgradeDaemonRequest) (*listenerdv1.UpgradeDaemonResponse, error) {
	if s.upgrade == nil {
		return nil, s.err(listener.ErrShuttingDown)
	}
	if req.GetBinary() != "" {
		// Whoever reaches the TCP API must not choose what runs here.
		if p, ok := peer.FromContext(ctx); !ok || p.Addr == nil || p.Addr.Network() != "unix" {
			return nil, s.err(listener.Invalid("binary", "only over the daemon's unix socket"))
		}
	}
	u, err := s.upgrade(ctx, req.GetBinary())
	if err != nil {
		return nil, s.err(err)
	}
	return &listenerdv1.UpgradeDaemonResponse{Pid: int64(u.PID), Binary: u.Binary, BootId: u.BootID,
		HeadSequence: u.Head, Listeners: int32(u.Listeners), DrainingConnections: u.Draining}, nil
}
