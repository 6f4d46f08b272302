package ctl

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/version"
)

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Show ctl's version and the daemon's",
		Long: `Show the build of ctl and of the daemon it talks to: version, VCS revision
and its time, whether the tree was modified (dirty), and the Go version.
ctl's own is printed even when the daemon cannot be reached (then the exit
code says why); ctl --version prints ctl's alone, without asking.`,
		Example: `  ctl version
  ctl version -o json`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			client := version.Get().Proto()
			var daemon *listenerdv1.BuildInfo
			c, ctx, cancel, err := a.call(cmd.Context())
			if err == nil {
				defer cancel()
				var resp *listenerdv1.GetDaemonStatusResponse
				if resp, err = c.GetDaemonStatus(ctx, &listenerdv1.GetDaemonStatusRequest{}); err == nil {
					daemon = resp.GetStatus().GetBuild()
				}
			}
			if a.json() {
				if werr := writeVersionsJSON(a, client, daemon); werr != nil {
					return werr
				}
				return err
			}
			fmt.Fprintf(a.stdout, "client: %s\n", version.FromProto(client))
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "daemon: %s\n", version.FromProto(daemon))
			return nil
		},
	}
}

// writeVersionsJSON writes {"client": BuildInfo, "daemon": BuildInfo} on
// one line; daemon is left out when nil.
func writeVersionsJSON(a *app, client, daemon *listenerdv1.BuildInfo) error {
	doc := map[string]json.RawMessage{}
	for name, b := range map[string]*listenerdv1.BuildInfo{"client": client, "daemon": daemon} {
		if b == nil {
			continue
		}
		raw, err := protojson.Marshal(b)
		if err != nil {
			return err
		}
		doc[name] = raw
	}
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(doc); err != nil { // compact, one line
		return err
	}
	_, err := a.stdout.Write(buf.Bytes())
	return err
}
