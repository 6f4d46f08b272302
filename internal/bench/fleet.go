package main

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/listenerd/listenerd/internal/fleet/natstest"
)

// startNATS starts case k's JetStream server in this process, and a
// daemon publishing to it with an echo listener.
func (b *bench) startNATS(ctx context.Context) error {
	s, err := natstest.Start(filepath.Join(b.tmp, "nats"))
	if err != nil {
		return err
	}
	b.cleanups = append(b.cleanups, func() { natstest.Stop(s) })
	b.natsEnv = []string{"LISTENERD_NATS=" + s.ClientURL(), "LISTENERD_HOST_NAME=bench"}
	if b.natsD, err = startDaemon(ctx, b.daemonBin, b.tmp, "nats", b.natsEnv, ""); err != nil {
		return err
	}
	b.cleanups = append(b.cleanups, func() { _ = b.natsD.stop() })
	if _, b.natsAddr, err = b.natsD.createListener(ctx, echoHandler()); err != nil {
		return fmt.Errorf("the --nats daemon's listener: %w", err)
	}
	return nil
}
