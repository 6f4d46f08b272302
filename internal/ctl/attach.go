package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/listenerd/listenerd/api/listenerd"
)

func (a *app) attachCmd() *cobra.Command {
	var keep bool
	cmd := &cobra.Command{
		Use:   "attach LISTENER [--keep]",
		Short: "Serve a stream listener's connections on stdin and stdout, one at a time (nc -l)",
		Long: `Attach to a listener whose mode is stream (ctl listen --mode stream) and
serve its next connection on stdin and stdout, as nc -l does on a port of
its own: stdin goes to the peer, and what the peer sends comes out on
stdout as it is. Half-close goes both ways: when stdin ends, attach ends
its side of the connection (FIN) and goes on printing what the peer sends;
when the peer ends its side, attach stops printing and goes on sending
stdin. attach exits 0 once the connection has closed: both sides ended,
or a reset.

--keep serves the next connection after each one closes, until Ctrl-C
(nc -lk). stdin is shared: what one connection did not take goes to the
next, and once stdin has ended each new connection gets our end at once.

attach takes one connection at a time: others wait in the daemon, unread,
for the listener's claim timeout (or go to another program attached to the
same listener). Messages go to stderr. Ctrl-C resets the open connection
and exits 0; the listener stays open in the daemon. When the listener
closes before a connection came, attach exits 1 (with --keep, 0).`,
		Example: `  ctl listen --port 7000 --mode stream --name chat
  ctl attach chat                       # and elsewhere: nc 127.0.0.1 7000
  echo hello | ctl attach chat > reply.txt
  ctl attach chat --keep < /dev/null    # print what each client sends`,
		Args: exactArgs(1, "a listener id or name"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.attach(cmd.Context(), args[0], keep)
		},
	}
	cmd.Flags().BoolVarP(&keep, "keep", "k", false, "after a connection closes, serve the next one, until Ctrl-C (nc -lk)")
	return cmd
}

// attach is ctl attach: it serves the listener's connections one at a
// time on stdin and stdout, the first only unless keep.
func (a *app) attach(ctx context.Context, ref string, keep bool) error {
	l, err := a.attachListener(ctx, ref, 1, "attach", false)
	if err != nil {
		return err
	}
	defer l.Close()
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stop()
	in := newStdinPump(a.stdin)
	defer in.close()

	a.note("attached to %s as handler %s: waiting for a connection", l.ID(), l.HandlerID())
	for served := 0; ; served++ {
		conn, err := l.Accept()
		if err != nil {
			closed, err := acceptEnd(ctx, err)
			switch {
			case err != nil:
				return err
			case closed && served == 0 && !keep:
				return &messageError{code: ExitError, msg: fmt.Sprintf("listener %s closed before a connection came", l.ID())}
			case closed:
				a.note("listener %s closed", l.ID())
			}
			return nil
		}
		c := conn.(*listenerd.Conn)
		if !keep {
			// Detach: the next connections go to other handlers, or wait.
			_ = l.Close()
		}
		a.note("connection %s from %s", c.ID(), c.RemoteAddr())
		if err := a.attachConn(ctx, c, in); err != nil || !keep || ctx.Err() != nil {
			return err
		}
		a.note("waiting for the next connection")
	}
}

// attachConn serves one connection on stdin and stdout until it closes,
// or resets it when ctx ends.
func (a *app) attachConn(ctx context.Context, c *listenerd.Conn, in *stdinPump) error {
	sent := make(chan error, 1)
	go func() { sent <- toPeer(c, in.reader(c.Done())) }()
	got := make(chan struct{})
	go func() {
		defer close(got)
		rerr, werr := fromPeer(c, a.stdout)
		if werr != nil {
			a.note("connection %s: writing stdout: %v; what the peer sends is dropped", c.ID(), werr)
		}
		if errors.Is(rerr, io.EOF) {
			a.note("connection %s: the peer ended its side", c.ID())
		}
	}()
	select {
	case <-c.Done():
	case <-ctx.Done():
		_ = c.Reset()
		a.note("interrupted: connection %s reset", c.ID())
		<-c.Done()
	}
	<-got
	if err := <-sent; err == nil && a.verbose {
		a.note("connection %s: stdin ended, and so did our side", c.ID())
	}
	if c.Closed() == nil {
		return &messageError{code: ExitUnavailable, msg: closedNote(c)}
	}
	a.note("%s", closedNote(c))
	return nil
}

// stdinPump reads stdin ahead, a chunk at a time, for connections served
// one after another: what a connection did not take goes to the next.
type stdinPump struct {
	chunks chan []byte // closed at stdin's end
	stop   chan struct{}
	rest   []byte // the part of a chunk not read yet
}

func newStdinPump(r io.Reader) *stdinPump {
	p := &stdinPump{chunks: make(chan []byte), stop: make(chan struct{})}
	go func() {
		defer close(p.chunks)
		for {
			buf := make([]byte, listenerd.MaxFrame)
			n, err := r.Read(buf)
			if n > 0 {
				select {
				case p.chunks <- buf[:n]:
				case <-p.stop:
					return
				}
			}
			if err != nil {
				// A failed read ends stdin as its end does.
				return
			}
		}
	}()
	return p
}

// close lets the reading goroutine go, unless it waits on stdin itself:
// that read cannot be interrupted, and ends with the process.
func (p *stdinPump) close() { close(p.stop) }

// reader is stdin for one connection: its Read fails with errConnDone
// once done is closed.
func (p *stdinPump) reader(done <-chan struct{}) io.Reader {
	return pumpReader{p, done}
}

type pumpReader struct {
	p    *stdinPump
	done <-chan struct{}
}

func (r pumpReader) Read(b []byte) (int, error) {
	p := r.p
	if len(p.rest) == 0 {
		select {
		case chunk, ok := <-p.chunks:
			if !ok {
				return 0, io.EOF
			}
			p.rest = chunk
		case <-r.done:
			return 0, errConnDone
		}
	}
	n := copy(b, p.rest)
	p.rest = p.rest[n:]
	return n, nil
}
