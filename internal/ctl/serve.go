package ctl

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/listenerd/listenerd/api/listenerd"
)

// execTail marks a command whose --exec CMD takes the rest of the command
// line as CMD's arguments (app.run splits them off before cobra parses).
const execTail = "exec-tail"

// splitExec splits args after --exec CMD (or --exec=CMD): what follows is
// the command's own arguments, flags included, never ctl's.
func splitExec(args []string) (ctlArgs, cmdArgs []string) {
	for i, s := range args {
		switch {
		case s == "--":
			return args, nil
		case s == "--exec" && i+1 < len(args):
			return args[:i+2], args[i+2:]
		case strings.HasPrefix(s, "--exec="):
			return args[:i+1], args[i+1:]
		}
	}
	return args, nil
}

// serveOptions holds the flags of ctl serve.
type serveOptions struct {
	exec        string
	args        []string // the words after --exec CMD
	concurrency int
	grace       time.Duration
	noHandover  bool
}

// check validates the flags and finds the command, before anything is
// sent; it returns the command's path.
func (o *serveOptions) check() (string, error) {
	if o.exec == "" {
		return "", usageErrorf("--exec needs a command: ctl serve LISTENER --exec CMD [ARGS...]")
	}
	if o.concurrency < 1 || o.concurrency > 65535 {
		return "", usageErrorf("--concurrency must be 1-65535")
	}
	if o.grace < 0 {
		return "", usageErrorf("--grace must not be negative")
	}
	path, err := exec.LookPath(o.exec)
	if err != nil {
		var ee *exec.Error
		if errors.As(err, &ee) {
			err = ee.Err
		}
		return "", usageErrorf("--exec %s: %v", o.exec, err)
	}
	return path, nil
}

func (a *app) serveCmd() *cobra.Command {
	o := serveOptions{concurrency: 16, grace: 10 * time.Second}
	cmd := &cobra.Command{
		Use:   "serve LISTENER --exec CMD [ARGS...]",
		Short: "Run a command for each connection of a stream listener, on the socket's bytes (inetd, tcpserver)",
		Long: `Attach to a listener whose mode is stream (ctl listen --mode stream) and run
CMD for each of its connections, as inetd, tcpserver or ncat --exec do: the
command reads the peer's bytes on its stdin and writes its reply on its
stdout; its stderr is ctl's. Everything after --exec CMD is the command's
own arguments, so ctl's flags and LISTENER go before --exec.

When the daemon is on this host (its unix socket), the command gets the
connection's socket itself as its stdin and stdout, as inetd and systemd's
Accept=yes give it: bytes go at the kernel's speed and getpeername works.
Our end (FIN) then reaches the peer when the command exits, or when it
shuts the socket down itself: closing stdout alone does not end it, since
stdin is the same socket. The connection closes once the command has
exited.

With --no-handover, or with a daemon reached over TCP, the bytes come
through the API on pipes, and half-close is passed on both ways: when the
command closes its stdout (or exits), the peer gets our end (FIN) and may
still send; when the peer ends its side, the command's stdin ends. The
connection closes once the command has exited and both sides have ended.

A command that exits non-zero is reported on stderr and serving goes on;
-v also says when each connection starts and ends.

The command's environment is ctl's with, as tcpserver sets them:
  PROTO=TCP  TCPREMOTEIP  TCPREMOTEPORT  TCPLOCALIP  TCPLOCALPORT
and LISTENERD_LISTENER_ID, LISTENERD_CONNECTION_ID.

--concurrency connections are served at once (default 16); more wait in the
daemon, unread, for the listener's claim timeout, or go to another program
attached to the same listener. Each command runs in a process group of its
own. On Ctrl-C or SIGTERM, serve stops taking connections, waits up to
--grace (default 10s) for the running commands, then kills them (their
connections are reset) and exits 0. It also stops, with exit 0, when the
listener closes. When serve itself dies, the daemon resets the connections
it held; the listener stays.`,
		Example: `  ctl listen --port 7000 --mode stream --name echo
  ctl serve echo --exec cat
  ctl serve echo --concurrency 100 --exec sh -c 'echo "you are $TCPREMOTEIP:$TCPREMOTEPORT"'
  ctl serve web --exec ./handler.py --verbose`,
		Annotations: map[string]string{execTail: "true"},
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && len(a.execArgs) > 0 {
				return usageErrorf("missing a listener id or name: it goes before --exec, after which every word is the command's")
			}
			return exactArgs(1, "a listener id or name")(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("exec") {
				return usageErrorf("missing --exec CMD: the command to run for each connection")
			}
			o.args = a.execArgs
			path, err := o.check()
			if err != nil {
				return err
			}
			return a.serve(cmd.Context(), args[0], path, o)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.exec, "exec", "", "the command to run for each connection; the words after it are its arguments")
	fs.IntVar(&o.concurrency, "concurrency", o.concurrency, "how many connections are served at once, 1-65535")
	fs.DurationVar(&o.grace, "grace", o.grace, "on Ctrl-C or SIGTERM, how long running commands may take to finish before they are killed")
	fs.BoolVar(&o.noHandover, "no-handover", false, "give the command pipes carrying the bytes through the API, with half-close both ways, even when the daemon could hand the socket itself over")
	return cmd
}

// server is one run of ctl serve: the commands it runs, by connection.
type server struct {
	a    *app
	path string
	o    serveOptions
	lid  string

	mu      sync.Mutex
	running map[*session]struct{}
	wg      sync.WaitGroup
}

// session is one connection and the command serving it: its bytes
// through the API (c), or the socket itself handed over (tc).
type session struct {
	c  *listenerd.Conn
	tc *listenerd.TCPConn

	mu     sync.Mutex
	proc   *os.Process
	stdin  *os.File // the command's stdin, our end
	killed bool
}

// serve is ctl serve: it takes the listener's connections and runs the
// command for each, until ctx ends or the listener closes.
func (a *app) serve(ctx context.Context, ref, path string, o serveOptions) error {
	l, err := a.attachListener(ctx, ref, o.concurrency, "serve "+filepath.Base(o.exec), !o.noHandover)
	if err != nil {
		return err
	}
	defer l.Close()
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stop()
	s := &server{a: a, path: path, o: o, lid: l.ID(), running: make(map[*session]struct{})}
	a.note("serving %s with %s, %d at once, as handler %s", l.ID(), o.exec, o.concurrency, l.HandlerID())

	var acceptErr error
	for {
		conn, err := l.Accept()
		if err != nil {
			acceptErr = err
			break
		}
		switch c := conn.(type) {
		case *listenerd.Conn:
			s.start(&session{c: c})
		case *listenerd.TCPConn:
			s.start(&session{tc: c})
		}
	}
	_ = l.Close()
	closed, err := acceptEnd(ctx, acceptErr)
	if closed {
		a.note("listener %s closed", l.ID())
	}
	s.stop()
	return err
}

func (s *server) start(ss *session) {
	s.mu.Lock()
	s.running[ss] = struct{}{}
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.run(ss)
		s.mu.Lock()
		delete(s.running, ss)
		s.mu.Unlock()
	}()
}

// stop waits up to --grace for the running commands, then kills those
// left and resets their connections.
func (s *server) stop() {
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	s.mu.Lock()
	n := len(s.running)
	s.mu.Unlock()
	if n == 0 {
		<-done
		return
	}
	s.a.note("stopped taking connections; waiting up to %s for %s", humanDuration(s.o.grace), plural(uint64(n), "running command"))
	t := time.NewTimer(s.o.grace)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	s.mu.Lock()
	n = len(s.running)
	for ss := range s.running {
		ss.kill()
	}
	s.mu.Unlock()
	s.a.note("killed %s still running after --grace %s; their connections are reset", plural(uint64(n), "command"), humanDuration(s.o.grace))
	<-done
}

// kill kills the session's command, with its process group, and resets
// its connection.
func (ss *session) kill() {
	ss.mu.Lock()
	ss.killed = true
	if ss.proc != nil {
		killGroup(ss.proc)
		// A write the command does not read is let go: what is left of
		// its input goes nowhere now.
		ss.stdin.Close()
	}
	ss.mu.Unlock()
	ss.reset()
}

// id is the connection's id.
func (ss *session) id() string {
	if ss.tc != nil {
		return ss.tc.ID()
	}
	return ss.c.ID()
}

// reset resets the connection: through the API, or, handed over, with
// SO_LINGER 0 on the socket before our copy goes (the daemon's goes with
// it, and the last to go sends the RST).
func (ss *session) reset() {
	if ss.tc == nil {
		_ = ss.c.Reset()
		return
	}
	_ = ss.tc.SetLinger(0)
	_ = ss.tc.Close()
}

// startCmd starts cmd for the session, unless it is being killed.
func (ss *session) startCmd(cmd *exec.Cmd, stdin *os.File) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.killed {
		return errors.New("stopping")
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	ss.proc, ss.stdin = cmd.Process, stdin
	return nil
}

// command is the command for one connection, on stdin and stdout.
func (s *server) command(stdin, stdout *os.File, id string, local, remote net.Addr) *exec.Cmd {
	cmd := exec.Command(s.path, s.o.args...)
	cmd.Args[0] = s.o.exec
	cmd.Env = append(os.Environ(), connEnv(s.lid, id, local, remote)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, s.a.stderr
	cmd.SysProcAttr = childProcAttr()
	cmd.WaitDelay = time.Second // a stderr that is not a file is copied: a grandchild holding it does not hold Wait
	return cmd
}

// ended says how the command ended, unless it was killed.
func (s *server) ended(ss *session, werr error) {
	ss.mu.Lock()
	killed := ss.killed
	ss.mu.Unlock()
	if werr != nil && !killed {
		s.a.note("connection %s: %s: %v", ss.id(), s.o.exec, werr)
	}
}

// runHanded serves one handed-over connection: the socket itself is the
// command's stdin and stdout. Our copy is kept until the command exits,
// and its Close tells the daemon, whose copy goes then: the peer gets our
// end once no process holds the socket.
func (s *server) runHanded(ss *session) {
	tc, a := ss.tc, s.a
	f, err := tc.File() // a copy, in blocking mode for the command
	if err == nil {
		cmd := s.command(f, f, tc.ID(), tc.LocalAddr(), tc.RemoteAddr())
		err = ss.startCmd(cmd, nil)
		f.Close()
		if err == nil {
			if a.verbose {
				a.note("connection %s from %s: %s runs as pid %d", tc.ID(), tc.RemoteAddr(), s.o.exec, cmd.Process.Pid)
			}
			s.ended(ss, cmd.Wait())
			_ = tc.Close()
			if a.verbose {
				a.note("connection %s closed", tc.ID())
			}
			return
		}
	}
	a.note("connection %s: cannot run %s: %v; resetting it", tc.ID(), s.o.exec, err)
	ss.reset()
}

// run serves one connection with one run of the command.
func (s *server) run(ss *session) {
	if ss.tc != nil {
		s.runHanded(ss)
		return
	}
	c, a := ss.c, s.a
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		a.note("connection %s: %v; resetting it", c.ID(), err)
		_ = c.Reset()
		return
	}
	stdoutR, stdoutW, err := os.Pipe()
	if err != nil {
		a.note("connection %s: %v; resetting it", c.ID(), err)
		stdinR.Close()
		stdinW.Close()
		_ = c.Reset()
		return
	}
	cmd := s.command(stdinR, stdoutW, c.ID(), c.LocalAddr(), c.RemoteAddr())
	err = ss.startCmd(cmd, stdinW)
	stdinR.Close()
	stdoutW.Close()
	if err != nil {
		a.note("connection %s: cannot run %s: %v; resetting it", c.ID(), s.o.exec, err)
		stdinW.Close()
		stdoutR.Close()
		_ = c.Reset()
		<-c.Done()
		return
	}
	if a.verbose {
		a.note("connection %s from %s: %s runs as pid %d", c.ID(), c.RemoteAddr(), s.o.exec, cmd.Process.Pid)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	var copies sync.WaitGroup
	copies.Add(2)
	go func() {
		defer copies.Done()
		// The command's stdout to the peer, then our FIN when it closes.
		_ = toPeer(c, stdoutR)
		stdoutR.Close() // a command still writing gets EPIPE
	}()
	go func() {
		defer copies.Done()
		// The peer's bytes to the command's stdin, closed at the peer's FIN.
		_, _ = fromPeer(c, stdinW)
		stdinW.Close()
	}()
	<-c.Done()
	// The connection is gone: a command still writing gets EPIPE. Its stdin
	// is left to fromPeer, which closes it once the peer's last bytes are
	// written (a command that does not read them holds its session until
	// it exits).
	stdoutR.Close()
	copies.Wait()
	s.ended(ss, <-exited)
	if a.verbose || c.Closed() == nil {
		a.note("%s", closedNote(c))
	}
}

// connEnv is the connection's five-tuple and ids for the command's
// environment, named as tcpserver names them.
func connEnv(listenerID, id string, local, remote net.Addr) []string {
	env := []string{"PROTO=TCP"}
	for _, e := range []struct {
		prefix string
		addr   net.Addr
	}{{"TCPLOCAL", local}, {"TCPREMOTE", remote}} {
		if ta, ok := e.addr.(*net.TCPAddr); ok {
			env = append(env, e.prefix+"IP="+ta.IP.String(), e.prefix+"PORT="+strconv.Itoa(ta.Port))
		}
	}
	return append(env, "LISTENERD_LISTENER_ID="+listenerID, "LISTENERD_CONNECTION_ID="+id)
}
