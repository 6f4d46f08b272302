package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc/codes"

	"github.com/listenerd/listenerd/api/listenerd"
)

// The stream handler's ctl side: ctl attach and ctl serve attach to a
// listener whose mode is stream, through api/listenerd, and serve its
// connections from here. This file holds what both do: attach, tell why
// accepting ended, and carry one connection's bytes each way with the
// half-close passed on.

// maxLabel is the most bytes of a handler's label the daemon takes.
const maxLabel = 128

// attachListener attaches to the stream listener ref as a handler that
// takes n connections at once, labelled with what it does.
func (a *app) attachListener(ctx context.Context, ref string, n int, what string, handover bool) (*listenerd.Listener, error) {
	client, err := a.dial()
	if err != nil {
		return nil, err
	}
	ctx, cancel := a.unary(ctx) // the attach outlives it: it bounds the answer
	defer cancel()
	opts := []listenerd.ListenOption{listenerd.WithConcurrency(n), listenerd.WithLabel(handlerLabel(what))}
	if !handover {
		// Through the API: the bytes go where ctl carries them.
		opts = append(opts, listenerd.WithoutHandover())
	}
	return client.Attach(ctx, ref, opts...)
}

// handlerLabel names this process in the daemon's handler_attached events:
// "ctl serve cat, pid 4242 on host".
func handlerLabel(what string) string {
	l := fmt.Sprintf("ctl %s, pid %d", what, os.Getpid())
	if host, err := os.Hostname(); err == nil && host != "" {
		l += " on " + host
	}
	l = strings.ToValidUTF8(l, "?")
	for len(l) > maxLabel {
		_, size := utf8.DecodeLastRuneInString(l)
		l = l[:len(l)-size]
	}
	return l
}

// acceptEnd says why Accept failed: listenerClosed when the listener
// closed (or the daemon is stopping, which closes it), and nil for an
// interrupt (ctx) as well; any other error is returned.
func acceptEnd(ctx context.Context, err error) (listenerClosed bool, _ error) {
	if ctx.Err() != nil {
		return false, nil
	}
	if st, ok := grpcStatus(err); ok && st.Code() == codes.FailedPrecondition && errorInfo(st).GetReason() == "NOT_LISTENING" {
		return true, nil
	}
	return false, err
}

// errConnDone is a read of a source for a connection that has closed.
var errConnDone = errors.New("the connection closed")

// toPeer sends what r yields to the peer and, at r's end (io.EOF), ends
// our side (FIN): the peer can still send. It returns nil at r's end, or
// the error of a read of r or of a write to a connection that is gone.
func toPeer(c *listenerd.Conn, r io.Reader) error {
	buf := make([]byte, listenerd.MaxFrame)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) {
			return c.CloseWrite()
		}
		if err != nil {
			return err
		}
	}
}

// fromPeer writes the peer's bytes to w until the peer ends its side
// (io.EOF) or the connection closes, and returns which. Once w fails
// (writeErr), the rest is read and dropped: a peer is never held up by a
// reader that went away, and its end is still seen.
func fromPeer(c *listenerd.Conn, w io.Writer) (readErr, writeErr error) {
	buf := make([]byte, listenerd.MaxFrame)
	for {
		n, err := c.Read(buf)
		if n > 0 && writeErr == nil {
			_, writeErr = w.Write(buf[:n])
		}
		if err != nil {
			return err, writeErr
		}
	}
}

// closedNote is what ctl says of a connection that ended: how, with its
// bytes each way, or that listenerd went away.
func closedNote(c *listenerd.Conn) string {
	if r := c.Closed(); r != nil {
		return fmt.Sprintf("connection %s closed (%s)", c.ID(), closedSummary(r))
	}
	return fmt.Sprintf("connection %s: lost listenerd; the connection is gone", c.ID())
}
