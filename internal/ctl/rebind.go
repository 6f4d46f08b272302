package ctl

import (
	"fmt"

	"github.com/spf13/cobra"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

func (a *app) rebindCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "rebind ID",
		Short: "Bind a FAILED listener again",
		Long: `Bind a FAILED listener again, with the same id, name and spec: for example one
restored when the daemon started whose port another program held. The port
must be free now; the listener is LISTENING when this command returns.
ctl ls shows FAILED listeners, and ctl get their last error.`,
		Example: `  ctl ls                      # STATE failed
  ctl get web                 # last error: address already in use
  ctl rebind web              # once the port is free
  ctl rebind ln-1a2b3c4d -o json`,
		Args: exactArgs(1, "a listener id or name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, ctx, cancel, err := a.call(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := client.RebindListener(ctx, &listenerdv1.RebindListenerRequest{Id: args[0]})
			if err != nil {
				return err
			}
			l := resp.GetListener()
			if a.json() {
				return writeDoc(a.stdout, l)
			}
			_, err = fmt.Fprintf(a.stdout, "listening on %s (id %s, rebound)\n", address(l), l.GetId())
			return err
		},
	}
}
