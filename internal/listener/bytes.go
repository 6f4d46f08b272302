package listener

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/listenerd/listenerd/internal/events"
)

// bufPool holds read buffers. A buffer is taken only once data is waiting
// and given back as soon as the socket is drained, so an idle connection
// pins none.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// pump reads until the peer ends its side, counting, and with echo writes
// every byte back before reading more. It returns nil at the peer's FIN.
func (c *Conn) pump(echo bool, idle time.Duration) error {
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

// got counts and reports bytes read, and with echo writes them back.
//
// Not inlined: keeps pump's frame small: its goroutine idles in pump.
//
//go:noinline
func (c *Conn) got(p []byte, echo bool, idle time.Duration) error {
	c.AddIn(len(p))
	data := c.publishData(nil, p, false)
	if echo {
		w, werr := c.write(p, idle)
		c.AddOut(w)
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
func (c *Conn) publishData(kept, p []byte, out bool) []byte {
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

// write writes p back. With idle set, a peer that sends and never reads
// is idle too: the write fails once no byte has gone for idle, while a
// slow reader that takes something in every idle keeps it going.
func (c *Conn) write(p []byte, idle time.Duration) (int, error) {
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
func (c *Conn) idleWatch(idle time.Duration, activity *atomic.Int64) (stop func()) {
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
func (c *Conn) peersAcked(marks *[2]ackMark) bool {
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

// touching is a connection that stores the time in activity, when set,
// whenever bytes move, and marks its write errors.
type touching struct {
	c        *net.TCPConn
	activity *atomic.Int64
}

func (t touching) Read(p []byte) (int, error) {
	n, err := t.c.Read(p)
	t.moved(n)
	return n, err
}

func (t touching) Write(p []byte) (int, error) {
	n, err := t.c.Write(p)
	t.moved(n)
	if err != nil {
		err = writeError{err}
	}
	return n, err
}

func (t touching) moved(n int) {
	if n > 0 {
		touch(t.activity)
	}
}
