package listener

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/listenerd/listenerd/internal/events"
)

// A Handler serves the connections of one listener: the engine calls Serve
// on the connection's own goroutine once the connection is admitted (and,
// with pause_on_connect, taken), and the connection is closed when Serve
// returns. The engine keeps the accounting: limits, counters, the opened
// and closed events, the idle and lifetime bounds' closes, joins.
//
// Serve returns nil when the peer ended the connection, or why it ended
// otherwise: one made by UpstreamError is an upstream failure (whatever it
// wraps), any other error wrapping os.ErrDeadlineExceeded an idle timeout,
// anything else a reset. A
// close by the daemon (a kick, a drain, a lifetime) is recorded before
// Serve sees its socket fail, and wins.
type Handler interface {
	Serve(c *Conn) error
}

// HandlerKind is one kind of handler in the table the daemon gives the
// manager (Options.Handlers): its name, which is the API's handler field,
// and how to make the handler of a listener from that listener's options.
type HandlerKind struct {
	Name string
	// New checks a listener's options (JSON, nil for none) and returns its
	// handler. An invalid option is a *FieldError whose Field is the
	// option's name ("upstream"); the engine puts the spec's path before it.
	New func(opts json.RawMessage) (Handler, error)
}

// Builtin returns the handlers every daemon has: discard, echo, forward,
// stream.
func Builtin() []HandlerKind { return []HandlerKind{Discard, Echo, Forward, Stream} }

// handlerTable is the manager's handlers by name.
type handlerTable map[string]HandlerKind

func newHandlerTable(kinds []HandlerKind) handlerTable {
	if kinds == nil {
		kinds = Builtin()
	}
	t := make(handlerTable, len(kinds))
	for _, k := range kinds {
		t[k.Name] = k
	}
	return t
}

// make makes the handler h names. Its errors name the spec's field.
func (t handlerTable) make(h HandlerSpec) (Handler, error) {
	name := h.Name()
	k, ok := t[name]
	if !ok {
		names := slices.Sorted(maps.Keys(t))
		return nil, Invalid("spec.handler", "unknown handler %q (this daemon has %s)", Clip(name), strings.Join(names, ", "))
	}
	hd, err := k.New(h.Options)
	if err == nil {
		return hd, nil
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		return nil, Invalid("spec.handler."+name+"."+fe.Field, "%s", fe.Msg)
	}
	return nil, Invalid("spec.handler."+name, "%v", err)
}

// decodeOptions decodes a handler's JSON options into v, refusing fields
// it does not know. Nil or empty options leave v as it is.
func decodeOptions(opts json.RawMessage, v any) error {
	if len(opts) == 0 {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(opts)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("options: %v", err)
	}
	return nil
}

// ErrUpstream marks a failure of a handler's far side (forward's upstream):
// the connection closes with the reason upstream_failed.
var ErrUpstream = errors.New("upstream")

// UpstreamError marks err as a failure of the handler's far side.
func UpstreamError(err error) error { return upstreamError{err} }

type upstreamError struct{ err error }

func (e upstreamError) Error() string { return "upstream: " + e.err.Error() }
func (e upstreamError) Unwrap() []error {
	return []error{ErrUpstream, e.err}
}

// What a handler gets of its connection.

// Socket is the accepted socket. Reads and writes a handler makes on it
// directly bypass the listener's filters and counters: use In and Out, or
// count with AddIn and AddOut.
func (c *Conn) Socket() *net.TCPConn { return c.c }

// Tuple is the connection's five-tuple.
func (c *Conn) Tuple() events.Tuple { return c.tuple }

// ID is the connection's daemon-wide id.
func (c *Conn) ID() string { return events.ConnID(c.l.id, c.n) }

// IdleTimeout is the idle bound in force when the connection was served (0:
// none). The handler enforces it on its reads and writes.
func (c *Conn) IdleTimeout() time.Duration { return c.idle }

// AllowHalfOpen says whether the daemon keeps its side open once the peer
// ended its side.
func (c *Conn) AllowHalfOpen() bool { return c.l.spec.AllowHalfOpen }

// Closed is closed once the daemon closes the connection (a kick, a drain,
// a lifetime, an idle timeout).
func (c *Conn) Closed() <-chan struct{} { return c.killed() }

// AddIn counts n bytes read from the client.
func (c *Conn) AddIn(n int) {
	c.in.Add(uint64(n))
	c.l.bytesIn.Add(uint64(n))
}

// AddOut counts n bytes written to the client.
func (c *Conn) AddOut(n int) {
	c.out.Add(uint64(n))
	c.l.bytesOut.Add(uint64(n))
}

// PeerEnded reports that the peer ended its side (a connection_half_closed
// event).
func (c *Conn) PeerEnded() {
	c.l.bus.Publish(events.Event{Listener: c.l.id, Kind: events.KindConnectionHalfClosed, Conn: c.n, Tuple: c.tuple})
}

// Hold keeps the connection open, unread, until the daemon closes it or it
// sits idle for its idle timeout.
func (c *Conn) Hold() { c.hold(c.idle) }
