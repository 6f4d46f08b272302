package listener

import (
	"errors"
	"io"
	"time"
)

// Stage is one step of a direction of a connection's byte path: bytes, in
// order, then the half-close (the sender's FIN).
type Stage interface {
	io.Writer
	CloseWrite() error
}

// A Filter sits on one direction of the byte path between a socket and its
// handler: it wraps the next stage and passes bytes and the half-close on,
// changed, held or dropped as it likes (the faults of a listener: latency,
// bandwidth, a reset). A filter is made for each connection.
type Filter func(next Stage) Stage

// Filters are the chains of a listener's two directions, applied in order:
// In[0] sees the client's bytes first, Out[0] the handler's.
type Filters struct {
	In  []Filter // client to handler
	Out []Filter // handler to client
}

func (f *Filters) empty() bool { return f == nil || len(f.In) == 0 && len(f.Out) == 0 }

func chain(fs []Filter, last Stage) Stage {
	s := last
	for i := len(fs) - 1; i >= 0; i-- {
		s = fs[i](s)
	}
	return s
}

// SetFilters puts filters on the byte path of the listener's connections
// served from now on; nil takes them off. Connections already served keep
// the path they started with.
func (l *Listener) SetFilters(f *Filters) {
	if f.empty() {
		f = nil
	}
	l.filters.Store(f)
}

// Filtered reports whether the connection's byte path has filters: a
// handler with a faster path of its own (splice, a kernel echo) must then
// go through In and Out.
func (c *Conn) Filtered() bool { return c.filters != nil }

// Out is the way to the client: through the listener's out filters, then
// written to the socket (counted, under the idle bound); its CloseWrite
// ends the daemon's side.
func (c *Conn) Out() Stage {
	var last Stage = socketStage{c}
	if c.filters != nil {
		return chain(c.filters.Out, last)
	}
	return last
}

// In reads the client until it ends its side, counting, and passes the
// bytes through the listener's in filters to dst; the client's FIN goes on
// as dst's CloseWrite. It returns nil at the FIN, or the first error of
// the read or of the path.
func (c *Conn) In(dst Stage) error {
	var s Stage = dst
	if c.filters != nil {
		s = chain(c.filters.In, dst)
	}
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	for {
		if c.idle > 0 {
			_ = c.c.SetReadDeadline(time.Now().Add(c.idle))
		}
		n, err := c.c.Read(*buf)
		if n > 0 {
			c.AddIn(n)
			c.publishData(nil, (*buf)[:n], false)
			if _, werr := s.Write((*buf)[:n]); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) {
			return s.CloseWrite()
		}
		if err != nil {
			return err
		}
	}
}

// socketStage writes to the client's socket.
type socketStage struct{ c *Conn }

func (s socketStage) Write(p []byte) (int, error) {
	w, err := s.c.write(p, s.c.idle)
	s.c.AddOut(w)
	s.c.publishData(nil, p[:w], true)
	return w, err
}

func (s socketStage) CloseWrite() error { return s.c.c.CloseWrite() }

// discardStage takes bytes and drops them.
type discardStage struct{}

func (discardStage) Write(p []byte) (int, error) { return len(p), nil }
func (discardStage) CloseWrite() error           { return nil }
