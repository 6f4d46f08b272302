package listener

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/listenerd/listenerd/internal/events"
)

// conn is one accepted connection, served by its own goroutine.
type conn struct {
	l      *Listener
	n      uint64
	c      *net.TCPConn
	tuple  events.Tuple
	opened time.Time
	in     atomic.Uint64
	out    atomic.Uint64

	reason atomic.Uint32 // events.CloseReason set by whoever closes it first

	// mu guards what close touches. The kill channel is made only for a
	// connection that waits on it (paused, half open, dialling upstream):
	// most connections are woken by their socket closing and never need
	// one, and an idle connection is cheaper without it.
	mu     sync.Mutex
	closed bool
	kill   chan struct{}
	peer   *net.TCPConn // forward: the upstream connection
}

// close closes the connection from the daemon's side with reason. It
// reports whether this call was the first to close it.
func (c *conn) close(reason events.CloseReason, reset bool) bool {
	first := c.reason.CompareAndSwap(0, uint32(reason))
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return first
	}
	c.closed = true
	if reset {
		_ = c.c.SetLinger(0)
	}
	if c.kill != nil {
		close(c.kill)
	}
	_ = c.c.Close()
	if c.peer != nil {
		_ = c.peer.Close()
	}
	return first
}

// killed returns a channel closed once the daemon closes the connection.
func (c *conn) killed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.kill == nil {
		c.kill = make(chan struct{})
		if c.closed {
			close(c.kill)
		}
	}
	return c.kill
}

// setPeer records the upstream connection, so that close closes it too. It
// reports false, having closed up, when the connection is already closed.
func (c *conn) setPeer(up *net.TCPConn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		_ = up.Close()
		return false
	}
	c.peer = up
	return true
}

// bufPool holds read buffers. A buffer is taken only once data is waiting
// and given back as soon as the socket is drained, so an idle connection
// pins none.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (c *conn) serve() {
	defer c.l.conWG.Done()
	lim := c.l.limits.Load()
	var t *time.Timer
	if lim.MaxLifetime > 0 {
		t = c.lifetime(lim.MaxLifetime)
	}
	var err error
	if c.l.spec.PauseOnConnect || c.l.spec.Handler.Kind == HandlerForward {
		err = c.serveOther(lim.IdleTimeout)
	} else {
		err = c.pump(c.l.spec.Handler.Kind == HandlerEcho, lim.IdleTimeout)
		if err == nil && c.l.spec.AllowHalfOpen {
			c.halfOpen(lim.IdleTimeout)
		}
	}
	_ = c.c.Close()
	if t != nil {
		t.Stop()
	}
	c.end(err)
}

//go:noinline
func (c *conn) lifetime(d time.Duration) *time.Timer {
	return time.AfterFunc(d, func() { c.close(events.CloseMaxLifetime, false) })
}

//go:noinline
func (c *conn) serveOther(idle time.Duration) error {
	if c.l.spec.PauseOnConnect {
		c.hold(idle)
		return nil
	}
	return c.forward(idle)
}

//go:noinline
func (c *conn) halfOpen(idle time.Duration) {
	// The peer ended its side; ours stays open until someone closes it.
	c.l.bus.Publish(events.Event{Listener: c.l.id, Kind: events.KindConnectionHalfClosed, Conn: c.n, Tuple: c.tuple})
	c.hold(idle)
}

//go:noinline
func (c *conn) end(err error) {
	reason := events.CloseReason(c.reason.Load())
	var errText string
	switch {
	case reason != 0:
	case err == nil:
		reason = events.ClosePeerClosed
	case errors.Is(err, os.ErrDeadlineExceeded):
		reason = events.CloseIdleTimeout
	case errors.Is(err, errUpstream):
		reason, errText = events.CloseUpstreamFailed, err.Error()
	default:
		reason, errText = events.CloseReset, err.Error()
	}
	c.l.finish(c, reason, errText)
}

// hold keeps the connection open, unread, until it is closed by the daemon
// or sits idle for idle (if set).
func (c *conn) hold(idle time.Duration) {
	if idle > 0 {
		t := time.AfterFunc(idle, func() { c.close(events.CloseIdleTimeout, false) })
		defer t.Stop()
	}
	<-c.killed()
}

// pump reads until the peer ends its side, counting, and with echo writes
// every byte back before reading more. It returns nil at the peer's FIN.
func (c *conn) pump(echo bool, idle time.Duration) error {
	rc, err := c.c.SyscallConn()
	if err != nil {
		return err
	}
	var r rawReader
	read := r.callback() // one closure for the connection's life
	defer r.release()
	for {
		if idle > 0 {
			_ = c.c.SetReadDeadline(time.Now().Add(idle))
		}
		if err := rc.Read(read); err != nil {
			return err
		}
		n, err := r.result()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if werr := c.got((*r.buf)[:n], echo, idle); werr != nil {
			return werr
		}
		if echo && n == len(*r.buf) {
			// A full buffer: a bulk burst, echoed in the kernel while it
			// lasts (splice_linux.go).
			r.release()
			if err := c.spliceEcho(rc, idle); err != nil {
				return err
			}
		}
	}
}

//go:noinline
func (c *conn) got(p []byte, echo bool, idle time.Duration) error {
	l := c.l
	n := len(p)
	c.in.Add(uint64(n))
	l.bytesIn.Add(uint64(n))
	data := c.publishData(nil, p, false)
	if echo {
		w, werr := c.write(p, idle)
		c.out.Add(uint64(w))
		l.bytesOut.Add(uint64(w))
		c.publishData(data, p[:w], true)
		if werr != nil {
			return werr
		}
	}
	return nil
}

// rawReader reads a socket through the runtime's poller with a buffer taken
// from the pool only when data is there: while the socket would block, the
// buffer goes back, so an idle connection pins none. It costs the same
// read(2) calls as net.Conn.Read.
type rawReader struct {
	buf *[]byte
	n   int
	err error
}

func (r *rawReader) callback() func(fd uintptr) bool {
	return func(fd uintptr) bool {
		if r.buf == nil {
			r.buf = bufPool.Get().(*[]byte)
		}
		for {
			r.n, r.err = syscall.Read(int(fd), *r.buf)
			if r.err != syscall.EINTR {
				break
			}
		}
		if r.err == syscall.EAGAIN {
			r.release() // idle: wait without a buffer
			return false
		}
		return true
	}
}

// result returns what the last read gave: a count, io.EOF, or an error.
func (r *rawReader) result() (int, error) {
	switch {
	case r.err != nil:
		return 0, os.NewSyscallError("read", r.err)
	case r.n <= 0:
		return 0, io.EOF
	}
	return r.n, nil
}

func (r *rawReader) release() {
	if r.buf != nil {
		bufPool.Put(r.buf)
		r.buf = nil
	}
}

// publishData records bytes moved as a data event, only while a watcher
// asks for data, and returns the bytes it kept (cut to the largest cap a
// watcher asked for). kept, when not nil, is a copy of bytes that p begins
// with (an echo writes back what it read): it is shared, not copied again.
func (c *conn) publishData(kept, p []byte, out bool) []byte {
	capb := c.l.bus.DataCap()
	if capb == 0 || len(p) == 0 {
		return nil
	}
	want := min(len(p), capb)
	data := kept
	if len(kept) >= want {
		data = kept[:want]
	} else {
		data = append([]byte(nil), p[:want]...)
	}
	c.l.bus.Publish(events.Event{Listener: c.l.id, Kind: events.KindConnectionData, Conn: c.n,
		BytesIn: uint64(len(p)), Detail: &events.Detail{Data: data, Outbound: out}})
	return data
}

// errUpstream marks a failure of the forward handler's upstream side.
var errUpstream = errors.New("upstream")

type upstreamError struct{ err error }

func (e upstreamError) Error() string { return "upstream: " + e.err.Error() }
func (e upstreamError) Unwrap() []error {
	return []error{errUpstream, e.err}
}

// write writes p back. With idle set, a peer that sends and never reads
// is idle too: the write fails once no byte has gone for idle, while a
// slow reader that takes something in every idle keeps it going.
func (c *conn) write(p []byte, idle time.Duration) (int, error) {
	if idle <= 0 {
		return c.c.Write(p)
	}
	stall := newWriteStall(c.c, idle)
	done := 0
	for {
		w, err := c.c.Write(p[done:])
		done += w
		switch {
		case err == nil:
			return done, nil
		case w > 0 && errors.Is(err, os.ErrDeadlineExceeded):
			stall.extend() // it moved: a new idle starts
		case !stall.retry(err):
			return done, err
		}
	}
}

// writeStall judges the writes to s under an idle timeout. Each write that
// moves bytes pushes the deadline on (extend). A wait that reached the
// deadline is retried when the peer has acknowledged more since the last
// look (it reads, slowly: a full kernel send buffer wakes a writer only
// once a third of it is free). Only a peer that takes nothing for idle is
// idle.
type writeStall struct {
	s    *net.TCPConn
	idle time.Duration
	mark ackMark
}

func newWriteStall(s *net.TCPConn, idle time.Duration) writeStall {
	w := writeStall{s: s, idle: idle}
	w.mark.advanced(s)
	w.extend()
	return w
}

func (w *writeStall) extend() { _ = w.s.SetWriteDeadline(time.Now().Add(w.idle)) }

func (w *writeStall) retry(err error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) || !w.mark.advanced(w.s) {
		return false
	}
	w.extend()
	return true
}

// ackMark is how many bytes a socket's peer had acknowledged at the last
// look (TCP_INFO's bytes_acked).
type ackMark uint64

// advanced reports whether s's peer has acknowledged bytes since the mark,
// and moves the mark. Where that cannot be known (not Linux) it is false:
// only bytes written or read count as progress there.
func (m *ackMark) advanced(s *net.TCPConn) bool {
	a, ok := ackedBytes(s)
	moved := ok && ackMark(a) != *m
	*m = ackMark(a)
	return moved
}

// touch stores the time in activity, when set: bytes moved.
func touch(activity *atomic.Int64) {
	if activity != nil {
		activity.Store(time.Now().UnixNano())
	}
}

// idleWatch closes the connection with the reason idle_timeout once no
// bytes have moved either way for idle (activity holds the time of the
// last move). It returns a stop that waits for the watch to end.
func (c *conn) idleWatch(idle time.Duration, activity *atomic.Int64) (stop func()) {
	touch(activity)
	quit, done := make(chan struct{}), make(chan struct{})
	var marks [2]ackMark // the client's, the upstream's
	c.peersAcked(&marks)
	go func() {
		defer close(done)
		t := time.NewTimer(idle)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
			}
			quiet := time.Since(time.Unix(0, activity.Load()))
			if quiet >= idle && c.peersAcked(&marks) {
				// A peer read what the kernel held: a blocked write
				// shows no progress of its own until much is freed.
				touch(activity)
				quiet = 0
			}
			if quiet >= idle {
				c.close(events.CloseIdleTimeout, false)
				return
			}
			t.Reset(idle - quiet)
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}

// peersAcked reports whether the client or the upstream acknowledged
// bytes since their marks, and moves the marks.
func (c *conn) peersAcked(marks *[2]ackMark) bool {
	c.mu.Lock()
	up := c.peer
	c.mu.Unlock()
	moved := false
	for i, s := range []*net.TCPConn{c.c, up} {
		if s != nil && marks[i].advanced(s) {
			moved = true
		}
	}
	return moved
}

// forward proxies the connection to the handler's upstream, passing a
// half-close through in each direction. On Linux pipeCopy splices without
// copying through user space, holding a pipe only while bytes flow.
func (c *conn) forward(idle time.Duration) error {
	h := c.l.spec.Handler
	timeout := h.ConnectTimeout
	if timeout <= 0 {
		timeout = DefaultConnectTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	kill := c.killed()
	go func() { // a kill cancels the dial
		select {
		case <-kill:
			cancel()
		case <-ctx.Done():
		}
	}()
	d := net.Dialer{ControlContext: func(ctx context.Context, _, address string, _ syscall.RawConn) error {
		if ap, err := netip.ParseAddrPort(address); err == nil {
			return c.l.manager.checkLoop(ctx, c.l, ap)
		}
		return nil
	}}
	nc, err := d.DialContext(ctx, "tcp", h.Upstream)
	cancel()
	if err != nil {
		return upstreamError{err}
	}
	up := nc.(*net.TCPConn)
	if !c.setPeer(up) { // closed while dialling
		return nil
	}
	defer up.Close()
	var activity *atomic.Int64
	if idle > 0 {
		activity = new(atomic.Int64)
		stop := c.idleWatch(idle, activity)
		defer stop()
	}

	// The side that fails first is the reason; the other direction then
	// fails only because of the close that follows, and is ignored. A copy
	// reads one side and writes the other: pipeCopy marks write errors.
	var failed atomic.Bool
	var upErr error // the upstream-to-client direction's failure
	done := make(chan struct{})
	go func() {
		defer close(done)
		n, err := pipeCopy(c.c, up, activity) // upstream to client
		c.out.Add(uint64(n))
		c.l.bytesOut.Add(uint64(n))
		if err != nil {
			if failed.Swap(true) {
				return
			}
			upErr = sideError(err, true)
			_ = c.c.Close() // ends the other direction's read of the client
			return
		}
		_ = c.c.CloseWrite()
	}()
	n, err := pipeCopy(up, c.c, activity) // client to upstream
	c.in.Add(uint64(n))
	c.l.bytesIn.Add(uint64(n))
	if err != nil {
		if failed.Swap(true) {
			<-done
			return upErr
		}
		_ = up.Close()
		<-done
		return sideError(err, false)
	}
	_ = up.CloseWrite()
	<-done
	return upErr
}

// sideError names the side of a forward copy's failure: the upstream's
// (upstreamError) or the client's (as it is, a reset). fromUpstream says
// whether the copy read the upstream and wrote the client.
func sideError(err error, fromUpstream bool) error {
	var we writeError
	wrote := errors.As(err, &we)
	if wrote != fromUpstream { // read the upstream, or wrote to it
		return upstreamError{err}
	}
	return err
}

// writeError marks a copy's failure to write its destination.
type writeError struct{ err error }

func (e writeError) Error() string { return e.err.Error() }
func (e writeError) Unwrap() error { return e.err }
