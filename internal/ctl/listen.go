package ctl

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// listenOptions holds the flags of ctl listen.
type listenOptions struct {
	port           uint32
	host           string
	name           string
	limits         limitFlags
	handler        handlerFlags
	allowHalfOpen  bool
	pauseOnConnect bool
	backlog        uint32
	allow          []string
	deny           []string
	noDelay        bool
	keepalive      time.Duration
	follow         bool
	data           bool
	faults         []string
}

func (o *listenOptions) addFlags(fs *pflag.FlagSet) {
	fs.Uint32Var(&o.port, "port", 0, "TCP port to bind; 0 takes an ephemeral port")
	fs.StringVar(&o.host, "host", "", "IP address or host name to bind (the daemon's default: 127.0.0.1)")
	fs.StringVar(&o.name, "name", "", "unique name, usable wherever an id is")
	o.limits.addFlags(fs)
	o.handler.addFlags(fs)
	fs.BoolVar(&o.allowHalfOpen, "allow-half-open", false, "keep the daemon's side open after the peer ends its side")
	fs.BoolVar(&o.pauseOnConnect, "pause-on-connect", false, "hold accepted connections without reading them")
	fs.Uint32Var(&o.backlog, "backlog", 0, "accept queue length for listen(2) (default: the system's)")
	fs.StringSliceVar(&o.allow, "allow", nil, "source CIDR allowed to connect; repeat or separate with commas (default: all)")
	fs.StringSliceVar(&o.deny, "deny", nil, "source CIDR refused; repeat or separate with commas; deny wins over allow")
	fs.BoolVar(&o.noDelay, "no-delay", true, "TCP_NODELAY on accepted connections; --no-delay=false turns Nagle's algorithm on")
	fs.DurationVar(&o.keepalive, "keepalive", 0, "TCP keepalive interval of accepted connections; 0 turns keepalive off (default: the daemon's, 15s)")
	fs.BoolVarP(&o.follow, "follow", "f", false, "after creating, print the listener's events until Ctrl-C or until it closes")
	fs.BoolVar(&o.data, "data", false, "with --follow, also print the bytes each client sends (DATA: lines)")
	fs.StringArrayVar(&o.faults, "fault", nil, "a fault in force from the first accept: KIND[,key=value…], the keys being ctl fault add's flags; repeat for more")
	for flag, field := range map[string]string{
		"port": "spec.port", "host": "spec.host", "name": "name",
		"allow-half-open": "spec.allow_half_open", "pause-on-connect": "spec.pause_on_connect",
		"backlog": "spec.backlog", "allow": "spec.allow_cidrs", "deny": "spec.deny_cidrs",
		"no-delay": "spec.no_delay", "keepalive": "spec.keepalive", "fault": "spec.faults",
	} {
		annotateField(fs, flag, field)
	}
}

// request builds the CreateListenerRequest from the parsed flags in fs.
// Optional fields are set only when their flag was given, so that the daemon's
// defaults apply otherwise (unset max_connections means unlimited).
func (o *listenOptions) request(fs *pflag.FlagSet) (*listenerdv1.CreateListenerRequest, error) {
	spec := &listenerdv1.ListenerSpec{
		Host:           o.host,
		Port:           o.port,
		AllowHalfOpen:  o.allowHalfOpen,
		PauseOnConnect: o.pauseOnConnect,
		AllowCidrs:     o.allow,
		DenyCidrs:      o.deny,
	}
	if fs.Changed("name") && o.name == "" {
		return nil, usageErrorf("--name must not be empty (leave it out for a listener with no name)")
	}
	for _, f := range []struct {
		name  string
		cidrs []string
	}{{"allow", o.allow}, {"deny", o.deny}} {
		if fs.Changed(f.name) && (len(f.cidrs) == 0 || slices.Contains(f.cidrs, "")) {
			return nil, usageErrorf("--%s: an empty CIDR (give an address or a prefix, e.g. 10.0.0.0/8)", f.name)
		}
	}
	if fs.Changed("backlog") {
		backlog := o.backlog
		spec.Backlog = &backlog
	}
	if fs.Changed("no-delay") {
		noDelay := o.noDelay
		spec.NoDelay = &noDelay
	}
	if fs.Changed("keepalive") {
		if o.keepalive < 0 {
			return nil, usageErrorf("--keepalive must not be negative (0 turns keepalive off)")
		}
		spec.Keepalive = durationpb.New(o.keepalive)
	}

	limits, _, err := o.limits.limits(fs, true)
	if err != nil {
		return nil, err
	}
	if proto.Size(limits) > 0 { // else the daemon's defaults: no limits
		spec.Limits = limits
	}

	handler, err := o.handler.handler(fs)
	if err != nil {
		return nil, err
	}
	spec.Handler = handler
	for _, s := range o.faults {
		f, err := parseFaultSpec(s)
		if err != nil {
			return nil, err
		}
		spec.Faults = append(spec.Faults, f)
	}
	return &listenerdv1.CreateListenerRequest{Name: o.name, Spec: spec}, nil
}

func (a *app) listenCmd() *cobra.Command {
	var o listenOptions
	cmd := &cobra.Command{
		Use:   "listen [flags]",
		Short: "Open a new TCP listener in the daemon",
		Long: `Open a new TCP listener in the daemon and print its bound address and id.
The port is open when this command returns. --port 0 (the default) takes an
ephemeral port.

--mode says what the daemon does with each connection:` + modeChoices().help() + `

--max-connections follows Node's server.maxConnections: without it a listener
accepts without limit; with it a connection over the limit is accepted and
closed at once (a rejected event), and 0 rejects every connection.
--overflow says what happens to a connection over the limit:` + overflowChoices().help() + `
A queue holds up to --queue-length connections (default 128), each for up to
--queue-timeout (default: no limit); a connection past either is rejected
(queue_full, queue_timeout).
--accept-rate (with --accept-burst) and --max-per-source reject connections
beyond a rate or beyond a number open from one address, with a rejected event.

--follow keeps running and prints the listener's events like a Node server's
log (CONNECTED:, QUEUED:, CLOSED:, REJECTED:; with --data also DATA:). Ctrl-C
stops following and exits 0; the listener stays open in the daemon (close it
with ctl close). Following ends by itself when the listener closes.`,
		Example: `  ctl listen --port 6969
  ctl listen --port 6969 --mode echo --name echo --follow
  ctl listen --port 0 --max-connections 2 --idle-timeout 30s
  ctl listen --port 8080 --max-connections 100 --overflow queue --queue-length 500 --queue-timeout 10s
  ctl listen --port 8080 --accept-rate 100 --accept-burst 200 --max-per-source 10
  ctl listen --port 7000 --no-delay=false --keepalive 1m
  ctl listen --host 0.0.0.0 --port 8080 --upstream 127.0.0.1:80 --allow 10.0.0.0/8
  ctl listen --port 8080 --upstream 127.0.0.1:80 --fault latency,latency=50ms,jitter=10ms,direction=out --fault reset,probability=0.01
  ctl listen --port 7000 --mode stream --name svc --claim-timeout 30s   # then: ctl serve svc --exec cat
  ctl listen --port 6969 -o json`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := o.request(cmd.Flags())
			if err != nil {
				return err
			}
			if o.data && !o.follow {
				return usageErrorf("--data needs --follow")
			}
			return a.listen(cmd.Context(), req, o.follow, o.data)
		},
	}
	o.addFlags(cmd.Flags())
	return cmd
}

// listen creates the listener and, with follow, prints its events.
func (a *app) listen(ctx context.Context, req *listenerdv1.CreateListenerRequest, follow, data bool) error {
	client, err := a.dial()
	if err != nil {
		return err
	}
	var head uint64
	var bootID string
	if follow {
		// Take the event head first and replay from it once the id is known:
		// no event of the new listener is missed, even its first connection.
		if head, bootID, err = a.head(ctx, client); err != nil {
			return err
		}
	}

	uctx, cancel := a.unary(ctx)
	resp, err := client.CreateListener(uctx, req)
	cancel()
	if err != nil {
		return err
	}
	l := resp.GetListener()
	printed := false
	announce := func() error {
		printed = true
		if a.json() {
			return writeDoc(a.stdout, l)
		}
		what := "id " + l.GetId()
		if l.GetName() != "" {
			what += ", name " + l.GetName()
		}
		_, err := fmt.Fprintf(a.stdout, "listening on %s (%s)\n", address(l), what)
		return err
	}
	if !follow {
		return announce()
	}

	p := newFollowPrinter()
	w := a.newWatcher(client, &listenerdv1.WatchEventsRequest{ListenerIds: []string{l.GetId()}, IncludeData: data}, func(out *bufio.Writer, ev *listenerdv1.Event) (bool, error) {
		if a.json() {
			_, closed := ev.GetKind().(*listenerdv1.Event_ListenerClosed)
			return closed, writeEventJSON(out, ev)
		}
		line, last := p.line(ev)
		if line != "" {
			if _, err := fmt.Fprintln(out, line); err != nil {
				return true, err
			}
		}
		return last, nil
	})
	w.last, w.bootID = &head, bootID
	// Say where the listener is once the follow is registered in the
	// daemon: the data of a client that connects on reading the address is
	// recorded (the daemon records data only while a watcher asks).
	w.opened = announce
	err = w.run(ctx)
	if !printed {
		if perr := announce(); err == nil {
			err = perr
		}
	}
	return err
}

// head returns the daemon's current event sequence and boot id: the first
// response of a watch stream, which is then dropped.
func (a *app) head(ctx context.Context, client listenerdv1.ListenerServiceClient) (uint64, string, error) {
	ctx, cancel := a.unary(ctx)
	defer cancel()
	s, err := client.WatchEvents(ctx, &listenerdv1.WatchEventsRequest{})
	if err != nil {
		return 0, "", err
	}
	resp, err := s.Recv()
	if errors.Is(err, io.EOF) {
		return 0, "", errors.New("listenerd ended the event stream before it began")
	}
	if err != nil {
		return 0, "", err
	}
	return resp.GetHeadSequence(), resp.GetBootId(), nil
}
