package ctl

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// upgradeWait bounds ctl upgrade: the daemon bounds each of its two waits
// on the new process (server.DefaultUpgradeTimeout), and says why it
// gave up.
const upgradeWait = 3 * time.Minute

func (a *app) upgradeCmd() *cobra.Command {
	var binary string
	cmd := &cobra.Command{
		Use:   "upgrade",
		Short: "Replace the daemon process without refusing a connection",
		Long: `Replace the running daemon with a new process of its binary (as found at the
path it was started from, so a binary replaced there is the new one), or of
--binary: the new process takes every listening socket, the API socket, the
listeners' state and the event history, and accepts from then on; the old one
lets its open connections finish within its shutdown timeout and exits.
Nobody is refused, and watches (ctl watch) resume on the new process with no
gap. If the new binary fails to start, the daemon serves on and this command
says why. SIGUSR2 to the daemon does the same, for init systems.`,
		Example: `  ctl upgrade
  ctl upgrade --binary ./bin/listenerd
  ctl upgrade -o json`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if binary != "" {
				abs, err := filepath.Abs(binary) // the daemon's directory is not ours
				if err != nil {
					return usageErrorf("--binary: %v", err)
				}
				binary = abs
			}
			client, err := a.dial()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), upgradeWait)
			defer cancel()
			resp, err := client.UpgradeDaemon(ctx, &listenerdv1.UpgradeDaemonRequest{Binary: binary})
			if err != nil {
				return err
			}
			if a.json() {
				return writeDoc(a.stdout, resp)
			}
			_, err = fmt.Fprintf(a.stdout, "upgraded: pid %d serves (%s); %s handed over at seq=%d (boot %s); %s draining in the old process\n",
				resp.GetPid(), resp.GetBinary(), plural(uint64(resp.GetListeners()), "listener"),
				resp.GetHeadSequence(), resp.GetBootId(), plural(uint64(resp.GetDrainingConnections()), "connection"))
			return err
		},
	}
	cmd.Flags().StringVar(&binary, "binary", "", "the daemon binary to start (default: the running one's path)")
	return cmd
}
