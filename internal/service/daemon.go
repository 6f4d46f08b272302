package service

import (
	"context"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/version"
)

// GetDaemonStatus implements ListenerService.
func (s *Service) GetDaemonStatus(context.Context, *listenerdv1.GetDaemonStatusRequest) (*listenerdv1.GetDaemonStatusResponse, error) {
	caps, bus := s.m.Caps(), s.m.Bus()
	st := bus.Stats()
	out := &listenerdv1.DaemonStatus{
		BootId:              bus.BootID(),
		OpenFileLimit:       uint64(max(caps.FDLimit, 0)),
		DescriptorsReserved: uint64(max(caps.FDReserve, 0)),
		DescriptorsHeld:     uint64(max(caps.FDHeld, 0)),
		Connections:         uint64(max(caps.Connections, 0)),
		HistoryEvents:       st.Held,
		HistoryBytes:        uint64(max(st.HeldBytes, 0)),
		HistoryBytesLimit:   uint64(max(st.Budget, 0)),
		Build:               version.Get().Proto(),
	}
	if caps.MaxConnections > 0 {
		n := uint64(caps.MaxConnections)
		out.MaxConnections = &n
	}
	return &listenerdv1.GetDaemonStatusResponse{Status: out}, nil
}
