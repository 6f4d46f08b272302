package ctl

import (
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/version"
)

func (a *app) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the daemon's version, its own limits and what it holds against them",
		Long: `Show the daemon's version (ctl version compares it with ctl's), and its
own limits and what it holds against them: its open-file
limit, the descriptors it keeps for its API (--fd-reserve), those its
listeners and connections hold, the daemon-wide connection cap they leave,
and its event history against its byte budget (--history-bytes).`,
		Example: `  ctl status
  ctl status -o json`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, ctx, cancel, err := a.call(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := client.GetDaemonStatus(ctx, &listenerdv1.GetDaemonStatusRequest{})
			if err != nil {
				return err
			}
			if a.json() {
				return writeDoc(a.stdout, resp.GetStatus())
			}
			return writeStatus(a.stdout, resp.GetStatus())
		},
	}
}

// writeStatus prints the daemon's status as "key: value" lines.
func writeStatus(w io.Writer, st *listenerdv1.DaemonStatus) error {
	count := func(n uint64) string { return strconv.FormatUint(n, 10) }
	limit, maxConns := "unknown (no descriptor budget)", "unlimited"
	if st.GetOpenFileLimit() > 0 {
		limit = count(st.GetOpenFileLimit())
	}
	if st.MaxConnections != nil {
		maxConns = count(st.GetMaxConnections())
	}
	build := "unknown (the daemon does not say: older than ctl)"
	if st.GetBuild() != nil {
		build = version.FromProto(st.GetBuild()).String()
	}
	rows := [][2]string{
		{"version", build},
		{"boot id", st.GetBootId()},
		{"open-file limit", limit},
		{"fd reserve", count(st.GetDescriptorsReserved()) + " (for the API and the daemon)"},
		{"descriptors held", fmt.Sprintf("%d of %d (listeners, connections, upstreams, pipes)",
			st.GetDescriptorsHeld(), st.GetOpenFileLimit()-min(st.GetDescriptorsReserved(), st.GetOpenFileLimit()))},
		{"max connections", maxConns},
		{"connections", count(st.GetConnections())},
		{"history", fmt.Sprintf("%d events, %s of %s", st.GetHistoryEvents(),
			humanBytes(st.GetHistoryBytes()), humanBytes(st.GetHistoryBytesLimit()))},
	}
	return writeRows(w, rows)
}
