package listenerd

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// rpcTimeout bounds the short calls the package makes on its own.
const rpcTimeout = 30 * time.Second

// MaxFrame is the most bytes a data message carries: grpc-go pools a
// 32 KiB payload into a far larger buffer.
const MaxFrame = 32752

// Conn is one of the daemon's sockets, served from this process: a
// net.Conn over one ServeConnection stream, whose flow control is the
// socket's backpressure. CloseWrite ends our side (FIN) and leaves the
// socket readable; Reset resets it (RST); Close ends our side and stops
// reading. LocalAddr and RemoteAddr are the socket's real five-tuple.
// Read deadlines interrupt a blocked Read; a write deadline is checked
// before each frame (a frame blocked on flow control waits for the peer).
type Conn struct {
	s      listenerdv1.ListenerService_ServeConnectionClient
	cancel context.CancelFunc
	l      *Listener // the stream was taken for reuse: it goes back to l after closed
	// endMarks: the daemon takes our end or reset as the mark of this
	// connection's end on a reused stream (Take.end_marks); doneMarks:
	// only our end with done (Close) or reset, a plain end asking for the
	// take after closed.
	endMarks, doneMarks bool
	id                  string
	tuple               *listenerdv1.FiveTuple
	// The addresses, made from tuple when first asked for: most
	// connections never are.
	addrOnce      sync.Once
	local, remote *net.TCPAddr

	frames  chan []byte   // from recv, one at a time: Read takes each
	peerEnd chan struct{} // the peer's FIN, after its last frame
	done    chan struct{} // the stream ended; result or recvErr say how
	result  *listenerdv1.ConnectionClosed
	recvErr error
	gone    chan struct{} // Close: frames are dropped from now on
	// A send failed (sendFailed), and the reader holds a frame nobody
	// reads (stuck): the stream's end lies behind it, and a failed Write
	// does not wait for it.
	sendFailed, stuck   chan struct{}
	failOnce, stuckOnce sync.Once

	rmu  sync.Mutex // one Read at a time
	rbuf []byte

	dmu      sync.Mutex
	rdl, wdl time.Time
	rdlWake  chan struct{} // closed and replaced when the read deadline changes

	wmu      sync.Mutex
	wended   bool
	released bool // closed, and the stream given back: nothing more is sent on it
	marked   bool // once released: our end or reset went first, and was the mark (endMarks)
	answered bool // our end with done, or reset, went: the mark (doneMarks)
	closed   sync.Once
}

// newConn serves the connection o opened on stream s; with l, the stream
// goes back to l once the connection has closed. Its stream is read by
// recv (l nil) or recvReused (l set), which the caller runs.
func newConn(l *Listener, s listenerdv1.ListenerService_ServeConnectionClient, cancel context.CancelFunc, o *listenerdv1.ConnectionOpened) *Conn {
	c := &Conn{s: s, cancel: cancel, l: l, id: o.GetConnectionId(), tuple: o.GetTuple(),
		frames: make(chan []byte), peerEnd: make(chan struct{}), done: make(chan struct{}),
		gone: make(chan struct{}), rdlWake: make(chan struct{}), sendFailed: make(chan struct{}), stuck: make(chan struct{})}
	return c
}

// addrs makes the addresses from the tuple, once.
func (c *Conn) addrs() {
	t := c.tuple
	c.local = tcpAddr(net.JoinHostPort(t.GetLocalAddress(), itoa(t.GetLocalPort())))
	c.remote = tcpAddr(net.JoinHostPort(t.GetRemoteAddress(), itoa(t.GetRemotePort())))
}

func itoa(n uint32) string {
	var b [10]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// recv hands the daemon's messages over, one frame at a time, until the
// stream ends.
func (c *Conn) recv() {
	c.serve()
	c.cancel()
}

// recvReused hands the daemon's messages over, one frame at a time, until
// the connection closes; then it returns the stream to park again, or nil
// when the stream was released or ended.
func (c *Conn) recvReused() *parking {
	if c.serve() {
		return c.l.reuse(&parking{s: c.s, cancel: c.cancel, endMarks: c.endMarks, doneMarks: c.doneMarks, marked: c.marked})
	}
	c.cancel()
	return nil
}

// serve reads the stream until the stream ends, or, on a stream taken for
// reuse, until closed: the daemon has parked the stream again then, and
// serve says so.
func (c *Conn) serve() (reusable bool) {
	defer close(c.done)
	ended := false
	for {
		m, err := c.s.Recv()
		if err != nil {
			c.recvErr = err
			return false
		}
		switch k := m.GetKind().(type) {
		case *listenerdv1.ServeConnectionResponse_Data:
			c.deliver(k.Data)
		case *listenerdv1.ServeConnectionResponse_End:
			if !ended {
				ended = true
				close(c.peerEnd)
			}
		case *listenerdv1.ServeConnectionResponse_Closed:
			c.result = k.Closed
			if c.l != nil {
				// What this Conn sent is on the stream before the next
				// take; from now on it sends nothing.
				c.wmu.Lock()
				c.released = true
				c.marked = c.endMarks && (c.answered || !c.doneMarks && c.wended)
				c.wmu.Unlock()
				return true
			}
		}
	}
}

// deliver hands a frame to Read, or drops it after Close. A send that
// failed meanwhile is told that the frame waits (stuck): the stream's end
// cannot be read past it until Read takes it.
func (c *Conn) deliver(f []byte) {
	select {
	case c.frames <- f:
		return
	case <-c.gone:
		return
	case <-c.sendFailed:
	}
	c.stuckOnce.Do(func() { close(c.stuck) })
	select {
	case c.frames <- f:
	case <-c.gone:
	}
}

// sendErr is the error of a send that failed: the stream ended.
func (c *Conn) sendErr(op string) error {
	c.failOnce.Do(func() { close(c.sendFailed) })
	return c.endErr(op)
}

// ID is the connection's id on the daemon.
func (c *Conn) ID() string { return c.id }

// Read reads the peer's bytes; io.EOF once the peer ended its side.
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for len(c.rbuf) == 0 {
		if err := c.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.rbuf)
	c.rbuf = c.rbuf[n:]
	return n, nil
}

// WriteTo writes the peer's bytes to w until the peer ends its side, as
// io.Copy(w, c) does through Read, but each frame as it came, with no
// buffer of its own: io.Copy(w, c) uses it. Read's deadline and Close
// interrupt it as they do Read.
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	var n int64
	for {
		if len(c.rbuf) > 0 {
			m, err := w.Write(c.rbuf)
			c.rbuf = c.rbuf[m:]
			n += int64(m)
			if err == nil && len(c.rbuf) > 0 {
				err = io.ErrShortWrite
			}
			if err != nil {
				return n, err
			}
		}
		if err := c.next(); err != nil {
			if err == io.EOF {
				return n, nil
			}
			return n, err
		}
	}
}

// next waits for the next frame (into rbuf) under the read deadline; nil
// to look at rbuf again (a frame came, or the deadline changed).
func (c *Conn) next() error {
	select {
	case <-c.gone:
		return c.opErr("read", net.ErrClosed)
	default:
	}
	c.dmu.Lock()
	dl, wake := c.rdl, c.rdlWake
	c.dmu.Unlock()
	var timeout <-chan time.Time
	var t *time.Timer
	if !dl.IsZero() {
		d := time.Until(dl)
		if d <= 0 {
			return c.opErr("read", os.ErrDeadlineExceeded)
		}
		t = time.NewTimer(d)
		timeout = t.C
	}
	err := c.wait(timeout, wake)
	if t != nil {
		t.Stop()
	}
	return err
}

// wait waits for the next frame (into rbuf), the peer's end, the
// stream's end, a Close, the deadline or a new deadline (nil: read on).
func (c *Conn) wait(timeout <-chan time.Time, wake <-chan struct{}) error {
	select {
	case f := <-c.frames:
		c.rbuf = f
	case <-c.peerEnd:
		// Frames before the end were all taken: the sender blocks on each
		// until Read has it.
		return io.EOF
	case <-c.done:
		return c.endErr("read")
	case <-c.gone:
		return c.opErr("read", net.ErrClosed)
	case <-timeout:
		return c.opErr("read", os.ErrDeadlineExceeded)
	case <-wake:
	}
	return nil
}

// Write writes p to the peer, in frames of at most MaxFrame bytes; it
// blocks while the peer does not read.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wended {
		return 0, c.opErr("write", net.ErrClosed)
	}
	if c.released {
		return 0, c.endErr("write")
	}
	done := 0
	for done < len(p) {
		c.dmu.Lock()
		dl := c.wdl
		c.dmu.Unlock()
		if !dl.IsZero() && !time.Now().Before(dl) {
			return done, c.opErr("write", os.ErrDeadlineExceeded)
		}
		n := min(len(p)-done, MaxFrame)
		if err := c.s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Data{Data: p[done : done+n]}}); err != nil {
			return done, c.sendErr("write")
		}
		done += n
	}
	return done, nil
}

// CloseWrite ends our side (FIN) once what was written is out; the peer's
// bytes can still be read.
func (c *Conn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.endLocked(false)
}

// endLocked sends our end; done (Close): we are done with the connection,
// and, on a reused stream, the daemon may park it again as soon as the
// connection has closed, with no take after its closed.
func (c *Conn) endLocked(done bool) error {
	if c.wended || c.released {
		return nil
	}
	c.wended, c.answered = true, done
	if err := c.s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_End{End: &listenerdv1.End{Done: done}}}); err != nil {
		return c.sendErr("close")
	}
	if c.l != nil {
		return nil // the stream stays open for the next take
	}
	return c.s.CloseSend()
}

// Reset resets the connection: the peer gets an RST, and what it had not
// read is lost.
func (c *Conn) Reset() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.wended && !c.released {
		c.wended, c.answered = true, true
		_ = c.s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Reset_{Reset_: &listenerdv1.Reset{}}})
		if c.l == nil {
			_ = c.s.CloseSend()
		}
	}
	c.closed.Do(func() { close(c.gone) })
	return nil
}

// Close ends our side (FIN) and stops reading: bytes the peer still sends
// are dropped, and the connection closes once the peer ends its side. On
// a reused stream, the daemon may then serve the next connection on the
// stream as soon as this one has closed.
func (c *Conn) Close() error {
	c.wmu.Lock()
	err := c.endLocked(true)
	c.wmu.Unlock()
	first := false
	c.closed.Do(func() { close(c.gone); first = true })
	if !first {
		return c.opErr("close", net.ErrClosed)
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		select {
		case <-c.done: // the connection had closed already: nothing lost
			return nil
		default:
		}
	}
	return err
}

// Done is closed once the daemon reported the connection closed (or the
// stream to it ended); Closed then says how.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Closed is the daemon's report of the connection's end (reason, bytes
// each way), once Done is closed; nil if the stream broke first.
func (c *Conn) Closed() *listenerdv1.ConnectionClosed {
	select {
	case <-c.done:
		return c.result
	default:
		return nil
	}
}

// errUnreadAhead is the error of a send on a stream that ended while the
// peer's bytes before its end are not read yet.
var errUnreadAhead = errors.New("the connection's stream ended (the peer's last bytes are not read yet)")

// endErr is the error of a read or write on a stream that has ended.
func (c *Conn) endErr(op string) error {
	select {
	case <-c.done:
	default:
		select {
		case <-c.done:
		case <-c.stuck:
			return c.opErr(op, errUnreadAhead)
		}
	}
	if r := c.result; r != nil {
		if r.GetReason() == listenerdv1.CloseReason_CLOSE_REASON_PEER_CLOSED {
			return io.EOF
		}
		return c.opErr(op, errors.New("connection closed: "+r.GetReason().String()+errorSuffix(r.GetError())))
	}
	if status.Code(c.recvErr) == codes.Canceled {
		return c.opErr(op, net.ErrClosed)
	}
	return c.opErr(op, c.recvErr)
}

func errorSuffix(s string) string {
	if s == "" {
		return ""
	}
	return ": " + s
}

func (c *Conn) opErr(op string, err error) error {
	c.addrOnce.Do(c.addrs)
	return &net.OpError{Op: op, Net: "tcp", Source: c.local, Addr: c.remote, Err: err}
}

// LocalAddr is the listener's side of the socket.
func (c *Conn) LocalAddr() net.Addr {
	c.addrOnce.Do(c.addrs)
	return c.local
}

// RemoteAddr is the peer's address.
func (c *Conn) RemoteAddr() net.Addr {
	c.addrOnce.Do(c.addrs)
	return c.remote
}

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	_ = c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the read deadline; it wakes a Read blocked now.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.dmu.Lock()
	c.rdl = t
	close(c.rdlWake)
	c.rdlWake = make(chan struct{})
	c.dmu.Unlock()
	return nil
}

// SetWriteDeadline sets the write deadline, checked before each frame.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.dmu.Lock()
	c.wdl = t
	c.dmu.Unlock()
	return nil
}
