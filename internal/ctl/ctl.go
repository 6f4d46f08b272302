// Package ctl implements ctl, the command-line client of listenerd. Its
// commands are a pure gRPC client of the daemon (listen, ls, get, limit,
// close, watch, conns, kick, rebind, and attach and serve, which serve a
// stream listener's connections), plus connect, a plain TCP client to try
// a listener out. Main is the whole program, so tests drive it like a user.
package ctl

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/listenerd/listenerd/api/listenerd"
	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/paths"
	"github.com/listenerd/listenerd/internal/version"
)

// Output formats accepted by -o/--output.
const (
	outputText = "text"
	outputJSON = "json"
	outputWide = "wide"
)

// defaultTimeout bounds each unary RPC unless --timeout says otherwise.
const defaultTimeout = 10 * time.Second

// Main runs ctl with args (without the program name), writing to stdout and
// stderr, and returns the process exit code (ExitOK, ExitError, ExitUsage,
// ExitNotFound or ExitUnavailable). Cancelling ctx ends streaming commands
// (watch, listen --follow, connect) with ExitOK.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return newApp(stdout, stderr).run(ctx, args)
}

// app is one run of ctl: its global flags, its writers and its lazily dialed
// connection to the daemon.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	// Global flags.
	socket    string
	api       apiFlags // --api and its credentials (api.go)
	output    string
	noHeaders bool
	timeout   time.Duration
	verbose   bool

	// ctlConfig (--ctl-config) and contextName (--context) choose the
	// contexts file and the context in it (contexts.go); contextUsed is
	// set once the context filled the flags.
	ctlConfig   string
	contextName string
	contextUsed bool
	// contextKeys are the flags the context set, and contextFrom names
	// the context and its file, for errors about them.
	contextKeys []string
	contextFrom string
	contextAddr string // the socket or API address the context gave

	// execArgs are the words after --exec CMD, for ctl serve (splitExec).
	execArgs []string

	// running is set once flags and arguments were accepted and a command's
	// RunE started; an error before that is a usage error.
	running bool

	// client is the daemon's, dialed on first use (dial).
	client *listenerd.Client

	// retry paces watch resumes after UNAVAILABLE or RESOURCE_EXHAUSTED.
	retry retryPolicy
	// now is the clock used for ages in tables.
	now func() time.Time
}

func newApp(stdout, stderr io.Writer) *app {
	return &app{
		stdin:  os.Stdin,
		stdout: stdout,
		stderr: stderr,
		retry:  defaultRetry,
		now:    time.Now,
	}
}

// run executes args and turns the outcome into an exit code, printing any
// error as one line on stderr.
func (a *app) run(ctx context.Context, args []string) int {
	root := a.rootCmd()
	if c, _, err := root.Find(args); err == nil && c.Annotations[execTail] != "" {
		args, a.execArgs = splitExec(args)
	}
	root.SetArgs(args)
	root.SetIn(a.stdin)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if a.client != nil {
		_ = a.client.Close()
	}
	if err == nil {
		return ExitOK
	}
	if !a.running {
		err = asUsage(err)
	} else if cmd != nil {
		err = flagError(cmd.Flags(), err)
	}
	msg, code := a.describe(err)
	msg += a.blameContext(msg)
	if code == ExitUsage && cmd != nil && isFlagOrArgError(err) {
		msg += fmt.Sprintf(" (see '%s --help')", cmd.CommandPath())
	}
	fmt.Fprintln(a.stderr, "ctl: "+msg)
	return code
}

const rootLong = `ctl controls listenerd, a daemon that hosts raw TCP listeners, over its gRPC
API on a unix socket (or its TCP API, with --api and credentials), and
connects to listeners as a plain TCP client.

An id or a name works wherever a listener id is asked for.

Contexts (ctl config) keep connection settings by name, as kubectl's do:
ctl --context NAME, or ctl config use-context NAME.

Output: -o text (tables for people, the default), -o wide (more columns),
-o json (for scripts: one JSON document, protojson with zero values written
out; the streams — watch, listen --follow, close --wait — print JSON lines,
one object a line).

Exit codes:
  0  success (and Ctrl-C on watch, listen --follow, attach, serve and connect)
  1  any other failure
  2  usage error or invalid input (bad flag or argument, INVALID_ARGUMENT)
  3  listener or connection not found (NOT_FOUND)
  4  daemon unreachable or not answering (UNAVAILABLE, DEADLINE_EXCEEDED)`

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "ctl",
		Short: "Control listenerd, a daemon of raw TCP listeners",
		Long:  rootLong,
		Example: `  go run ./daemon &                      # start the daemon
  ctl listen --port 6969 --mode echo     # open a listener
  ctl connect 127.0.0.1:6969 --send hi   # try it
  ctl ls                                 # list listeners
  ctl watch                              # stream every event
  source <(ctl completion bash)          # complete ids and names with TAB`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if a.timeout < 0 {
				return usageErrorf("--timeout must not be negative (0 means no limit)")
			}
			switch a.output {
			case outputText, outputJSON, outputWide:
				return nil
			}
			return usageErrorf("unknown output format %q (want text, json or wide)", a.output)
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return asUsage(err) })

	pf := root.PersistentFlags()
	pf.StringVar(&a.socket, "socket", paths.DefaultSocket(), "path of the daemon's API socket (env "+paths.SocketEnv+")")
	a.addAPIFlags(pf)
	pf.StringVarP(&a.output, "output", "o", outputText, "output format: text, wide or json")
	pf.BoolVar(&a.noHeaders, "no-headers", false, "omit the header row of tables")
	pf.DurationVar(&a.timeout, "timeout", defaultTimeout, "time allowed for each request to the daemon (0: no limit; streams are not limited)")
	pf.BoolVarP(&a.verbose, "verbose", "v", false, "say more on stderr (stream positions, error details)")
	pf.StringVar(&a.contextName, "context", "", "use this context's connection settings (ctl config; default: the current-context)")
	pf.StringVar(&a.ctlConfig, "ctl-config", "", "the contexts file (env "+CtlConfigEnv+"; default listenerd/ctl.yaml in the user's config directory)")

	root.AddCommand(
		a.listenCmd(),
		a.lsCmd(),
		a.getCmd(),
		a.limitCmd(),
		a.closeCmd(),
		a.watchCmd(),
		a.fleetCmd(),
		a.connsCmd(),
		a.kickCmd(),
		a.rebindCmd(),
		a.applyCmd(),
		a.attachCmd(),
		a.serveCmd(),
		a.connectCmd(),
		a.upgradeCmd(),
		a.faultCmd(),
		a.statusCmd(),
		a.versionCmd(),
		a.configCmd(),
	)
	root.Version = version.Get().String()
	root.SetVersionTemplate("ctl {{.Version}}\n")
	a.addCompletions(root)
	markRunning(root, &a.running)
	a.withContext(root)
	return root
}

// markRunning wraps the RunE of cmd and its children so that running is set
// once cobra has accepted flags and arguments and the command really runs.
func markRunning(cmd *cobra.Command, running *bool) {
	if run := cmd.RunE; run != nil {
		cmd.RunE = func(c *cobra.Command, args []string) error {
			*running = true
			return run(c, args)
		}
	}
	for _, c := range cmd.Commands() {
		markRunning(c, running)
	}
}

// exactArgs is cobra.ExactArgs with an error that names what is missing.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		switch {
		case len(args) < n:
			return &usageError{err: fmt.Errorf("missing %s", what)}
		case len(args) > n:
			return &usageError{err: fmt.Errorf("too many arguments: want %s, got %q", what, strings.Join(args, " "))}
		}
		return nil
	}
}

// dial returns the daemon's client, dialing it on first use, through
// api/listenerd with the Options of ctl's flags (api.go). The connection
// is closed when run ends.
func (a *app) dial() (*listenerd.Client, error) {
	if a.client != nil {
		return a.client, nil
	}
	o, err := a.options()
	if err != nil {
		return nil, err
	}
	// Reconnect about as fast as watch retries, instead of grpc's default
	// of 1s growing to 2 minutes. A connection attempt (TCP, then TLS)
	// may take the whole --timeout: a daemon whose TCP API is flooded
	// with connections that never authenticate answers a token holder,
	// but its handshake can take seconds on a busy machine
	// (a refused connection fails at once, whatever this says).
	connect := a.timeout
	if connect <= 0 {
		connect = time.Minute
	}
	o.DialOptions = []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.Config{
			BaseDelay:  defaultRetry.initial,
			Multiplier: 2,
			Jitter:     0.2,
			MaxDelay:   defaultRetry.max,
		},
		MinConnectTimeout: max(connect, 5*time.Second),
	})}
	c, err := listenerd.Dial(o)
	if err != nil {
		return nil, usageErrorf("bad --socket or --api %q: %v", a.where(), err)
	}
	a.client = c
	return c, nil
}

// unary returns the context for one unary RPC, bounded by --timeout.
func (a *app) unary(ctx context.Context) (context.Context, context.CancelFunc) {
	if a.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, a.timeout)
}

// call dials the daemon and returns its client with a context for one
// unary call (--timeout): the start of every one-call command.
func (a *app) call(ctx context.Context) (listenerdv1.ListenerServiceClient, context.Context, context.CancelFunc, error) {
	client, err := a.dial()
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := a.unary(ctx)
	return client, ctx, cancel, nil
}

// note prints one line on stderr.
func (a *app) note(format string, args ...any) {
	fmt.Fprintf(a.stderr, "ctl: "+format+"\n", args...)
}

// asOf says, with -v, which event sequence a list reflects.
func (a *app) asOf(seq uint64) {
	if a.verbose {
		a.note("as of seq=%d: ctl watch --since %d goes on from here", seq, seq)
	}
}

func (a *app) json() bool { return a.output == outputJSON }
func (a *app) wide() bool { return a.output == outputWide }
