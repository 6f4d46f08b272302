package ctl

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

func (a *app) lsCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List listeners",
		Long: `List every listener the daemon holds, oldest first, including closed ones
still draining. MAX is max-connections ("-" for unlimited); a QUEUED column
follows ACTIVE when a listener queues (--overflow queue). -o wide adds bytes
in and out and the creation time; -o json prints one JSON document, the
ListListenersResponse: {"listeners": [...], "sequence": "N"}, zero counts
included.
-v also says on stderr which event sequence the list reflects, for
ctl watch --since SEQ to go on from it without missing or repeating an event.`,
		Example: `  ctl ls
  ctl ls -o wide
  ctl ls -o json | jq -r '.listeners[].id'
  ctl ls -o json | python3 -m json.tool
  ctl ls -v    # ctl: as of seq=120: ctl watch --since 120 goes on from here`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, ctx, cancel, err := a.call(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := client.ListListeners(ctx, &listenerdv1.ListListenersRequest{})
			if err != nil {
				return err
			}
			a.asOf(resp.GetSequence())
			if a.json() {
				return writeDoc(a.stdout, resp)
			}
			return a.writeListeners(a.stdout, resp.GetListeners())
		},
	}
}

func (a *app) getCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show one listener",
		Long: `Show one listener, by id or name: its spec and its status, one "key: value"
line each. A listener that queues (--overflow queue) also shows its queue's
length and timeout, and how many connections wait in it. -o json prints the
Listener object, one JSON document, zero counts included.`,
		Example: `  ctl get ln-1a2b3c4d
  ctl get web -o json`,
		Args: exactArgs(1, "a listener id or name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, ctx, cancel, err := a.call(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := client.GetListener(ctx, &listenerdv1.GetListenerRequest{Id: args[0]})
			if err != nil {
				return err
			}
			return a.writeListener(a.stdout, resp.GetListener())
		},
	}
}

// limitOptions holds the flags of ctl limit: the limits of ctl listen,
// and --unlimited.
type limitOptions struct {
	limits    limitFlags
	unlimited bool
}

func (o *limitOptions) addFlags(fs *pflag.FlagSet) {
	o.limits.addFlags(fs)
	fs.BoolVar(&o.unlimited, "unlimited", false, "remove the connection limit")
}

// request builds the UpdateListenerRequest: its mask names exactly the limits
// whose flags were given. --unlimited names max_connections and leaves it
// unset.
func (o *limitOptions) request(id string, fs *pflag.FlagSet) (*listenerdv1.UpdateListenerRequest, error) {
	unlimited := fs.Changed("unlimited") && o.unlimited
	if unlimited && fs.Changed("max-connections") {
		return nil, usageErrorf("give --max-connections or --unlimited, not both")
	}
	limits, paths, err := o.limits.limits(fs, false)
	if err != nil {
		return nil, err
	}
	if unlimited { // max_connections comes first, as in limitSetters
		paths = append([]string{"spec.limits.max_connections"}, paths...)
	}
	if len(paths) == 0 {
		return nil, usageErrorf("nothing to change: give --unlimited, %s", limitFlagNames())
	}
	return &listenerdv1.UpdateListenerRequest{
		Listener:   &listenerdv1.Listener{Id: id, Spec: &listenerdv1.ListenerSpec{Limits: limits}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: paths},
	}, nil
}

func (a *app) limitCmd() *cobra.Command {
	var o limitOptions
	cmd := &cobra.Command{
		Use:   "limit ID [--max-connections N | --unlimited] [--overflow " + strings.Join(overflowChoices().words(), "|") + "] [--queue-length N] [--queue-timeout D] [--idle-timeout D] [--max-lifetime D] [--accept-rate R] [--accept-burst N] [--max-per-source N]",
		Short: "Change a listener's limits at runtime",
		Long: `Change a listener's limits without a rebind; only the limits given change.
A lowered --max-connections (or --max-per-source) closes nobody: it applies to
the next accept. --accept-rate 0 and --max-per-source 0 remove those limits.
--queue-length and --queue-timeout may be given alone for a listener that
queues already (--overflow queue).
Prints the limits now in force.`,
		Example: `  ctl limit web --max-connections 100
  ctl limit ln-1a2b3c4d --unlimited
  ctl limit web --max-connections 10 --overflow backlog --idle-timeout 1m
  ctl limit web --overflow queue --queue-length 64 --queue-timeout 5s
  ctl limit web --accept-rate 50 --accept-burst 100 --max-per-source 5
  ctl limit web --accept-rate 0 --max-per-source 0   # remove both`,
		Args: exactArgs(1, "a listener id or name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := o.request(args[0], cmd.Flags())
			if err != nil {
				return err
			}
			client, ctx, cancel, err := a.call(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := client.UpdateListener(ctx, req)
			if err != nil {
				return err
			}
			l := resp.GetListener()
			if a.json() {
				return writeDoc(a.stdout, l)
			}
			_, err = fmt.Fprintf(a.stdout, "limits of %s: %s\n", l.GetId(), limitsLine(l.GetSpec().GetLimits()))
			return err
		},
	}
	o.addFlags(cmd.Flags())
	cmd.MarkFlagsMutuallyExclusive("max-connections", "unlimited")
	return cmd
}

// closeRequest builds the CloseListenerRequest; drain_timeout is set only when
// --drain was given (0 destroys open connections at once).
func closeRequest(id string, fs *pflag.FlagSet, drain time.Duration, force bool) (*listenerdv1.CloseListenerRequest, error) {
	req := &listenerdv1.CloseListenerRequest{Id: id, Force: force}
	if fs.Changed("drain") {
		if force {
			return nil, usageErrorf("give --drain or --force, not both")
		}
		req.DrainTimeout = durationpb.New(drain)
	}
	return req, nil
}

func (a *app) closeCmd() *cobra.Command {
	var (
		drain time.Duration
		force bool
		wait  bool
	)
	cmd := &cobra.Command{
		Use:   "close ID [--drain D | --force] [--wait]",
		Short: "Close a listener",
		Long: `Close a listener: it stops accepting at once, and its port is free when this
command returns. Open connections drain for up to --drain (the daemon's
default, 30s, when not given), then are destroyed; --force (or --drain 0)
destroys them now.

--wait then waits until the last connection is gone (the listener_closed
event) and says how many drained and how many were destroyed; with -o json it
prints that event as a second line (JSON lines: the Listener, then the Event). Ctrl-C stops waiting (exit 1); the
listener goes on draining.`,
		Example: `  ctl close web
  ctl close ln-1a2b3c4d --drain 5s
  ctl close web --force
  ctl close web --drain 10s --wait   # returns when every connection is gone`,
		Args: exactArgs(1, "a listener id or name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := closeRequest(args[0], cmd.Flags(), drain, force)
			if err != nil {
				return err
			}
			client, err := a.dial()
			if err != nil {
				return err
			}
			if wait {
				return a.closeAndWait(cmd.Context(), client, req)
			}
			ctx, cancel := a.unary(cmd.Context())
			defer cancel()
			resp, err := client.CloseListener(ctx, req)
			if err != nil {
				return err
			}
			l := resp.GetListener()
			if a.json() {
				return writeDoc(a.stdout, l)
			}
			_, err = fmt.Fprintln(a.stdout, closedLine(l, req))
			return err
		},
	}
	cmd.Flags().DurationVar(&drain, "drain", 0, "let open connections drain for up to this long (default: the daemon's, 30s)")
	cmd.Flags().BoolVar(&force, "force", false, "destroy open connections now")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the last connection is gone (the listener_closed event)")
	cmd.MarkFlagsMutuallyExclusive("drain", "force")
	return cmd
}

// closedLine is what close prints: "closed ln-1a2b3c4d (draining 3
// connections)", or "destroying" for a close that drains nothing (--force,
// --drain 0).
func closedLine(l *listenerdv1.Listener, req *listenerdv1.CloseListenerRequest) string {
	s := "closed " + l.GetId()
	if n := l.GetStatus().GetActiveConnections(); n > 0 && l.GetStatus().GetState() == listenerdv1.State_STATE_DRAINING {
		verb := "draining"
		if req.GetForce() || (req.DrainTimeout != nil && req.DrainTimeout.AsDuration() == 0) {
			verb = "destroying"
		}
		s += fmt.Sprintf(" (%s %s)", verb, plural(n, "connection"))
	}
	return s
}

func plural(n uint64, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

func (a *app) connsCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "conns ID",
		Aliases: []string{"connections"},
		Short:   "List a listener's open connections",
		Long: `List the open connections of a listener (id or name), oldest first. Use a
connection id with ctl kick. When a connection waits in the listener's queue
(--overflow queue), or waited there, STATE (open or queued) and WAIT (how long
it waited) follow AGE. -o wide adds the family and the opening time; -o json
prints one JSON document, the ListConnectionsResponse:
{"connections": [...], "sequence": "N"}.`,
		Example: `  ctl conns web
  ctl conns ln-1a2b3c4d -o json`,
		Args: exactArgs(1, "a listener id or name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, ctx, cancel, err := a.call(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			resp, err := client.ListConnections(ctx, &listenerdv1.ListConnectionsRequest{ListenerId: args[0]})
			if err != nil {
				return err
			}
			a.asOf(resp.GetSequence())
			if a.json() {
				return writeDoc(a.stdout, resp)
			}
			return a.writeConnections(a.stdout, resp.GetConnections())
		},
	}
}

func (a *app) kickCmd() *cobra.Command {
	var reset bool
	cmd := &cobra.Command{
		Use:   "kick CONN [--reset]",
		Short: "Close one connection",
		Long: `Close one open connection by its id (as shown by ctl conns, e.g. ln-1a2b3c4d.3)
with a graceful FIN, or with --reset an RST. Its closed event gives the
reason "kicked"; a connection waiting in the queue is rejected instead, with
the reason kicked. -o json prints the request that was carried out.`,
		Example: `  ctl kick ln-1a2b3c4d.3
  ctl kick ln-1a2b3c4d.3 --reset`,
		Args: exactArgs(1, "a connection id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, ctx, cancel, err := a.call(cmd.Context())
			if err != nil {
				return err
			}
			defer cancel()
			req := &listenerdv1.CloseConnectionRequest{Id: args[0], Reset_: reset}
			if _, err := client.CloseConnection(ctx, req); err != nil {
				return err
			}
			if a.json() {
				return writeDoc(a.stdout, req)
			}
			verb := "kicked"
			if reset {
				verb = "reset"
			}
			_, err = fmt.Fprintf(a.stdout, "%s %s\n", verb, strings.TrimSpace(args[0]))
			return err
		},
	}
	cmd.Flags().BoolVar(&reset, "reset", false, "close with a TCP reset (RST) instead of a FIN")
	return cmd
}
