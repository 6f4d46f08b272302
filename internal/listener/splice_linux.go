package listener

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Bulk echo in the kernel. A connection whose read fills the whole buffer
// is in a bulk burst, and echoes it socket → pipe → socket with splice(2),
// without copying the bytes through user space, until the socket has
// nothing more to read: then the pipe goes back to the pool and the
// connection back to waiting with neither buffer nor pipe. An idle
// connection never holds a pipe (two descriptors each: 19,500 idle
// connections would need 39,000 more). Bytes a watcher wants to see go
// through the buffer, so the burst also ends when one asks for them.
//
// At most maxPipes pipes exist at once, pooled or in use: a client that
// sends and never reads leaves its connection waiting to write with a pipe
// full, so pipes must not grow with such clients. Past the cap a burst
// stays on the buffer, as before splicing.

const (
	pipeSize    = 1 << 20 // asked with F_SETPIPE_SZ; a smaller pipe works too
	maxPipes    = 32      // pipes in existence, pooled or in use
	pipePoolMax = 16      // empty pipes kept for the next burst
)

var (
	pipePool = make(chan *pipe, pipePoolMax)
	pipeSem  = make(chan struct{}, maxPipes) // one token per pipe in existence
)

// errNoPipe: maxPipes are in use.
var errNoPipe = errors.New("no pipe free")

// splicedBytes counts the bytes written by splice, echoed or forwarded,
// for tests.
var splicedBytes atomic.Uint64

type pipe struct {
	r, w, size int
	budget     fdBudget // its two descriptors are counted there; nil: nowhere
}

// getPipe takes a pipe from the pool, or makes one if maxPipes do not
// exist yet and budget (nil: none) has room for its two descriptors.
func getPipe(budget fdBudget) (*pipe, error) {
	select {
	case p := <-pipePool:
		return p, nil
	default:
	}
	select {
	case pipeSem <- struct{}{}:
	default:
		return nil, errNoPipe
	}
	if budget != nil && !budget.takeFDs(2) {
		<-pipeSem
		return nil, errNoPipe
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		if budget != nil {
			budget.giveFDs(2)
		}
		<-pipeSem
		return nil, err
	}
	size, err := unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize)
	if err != nil {
		size, err = unix.FcntlInt(uintptr(fds[0]), unix.F_GETPIPE_SZ, 0)
	}
	if err != nil || size <= 0 {
		size = 64 << 10 // the kernel's default
	}
	return &pipe{r: fds[0], w: fds[1], size: size, budget: budget}, nil
}

// putPipe keeps an empty pipe for reuse; one that still holds bytes, or
// that the pool has no room for, is closed.
func putPipe(p *pipe, empty bool) {
	if empty {
		select {
		case pipePool <- p:
			return
		default:
		}
	}
	_ = unix.Close(p.r)
	_ = unix.Close(p.w)
	if p.budget != nil {
		p.budget.giveFDs(2)
	}
	<-pipeSem
}

// spliceEcho echoes a bulk burst in the kernel until the socket is
// drained or the peer has ended its side (the next read sees the end
// again). Without a pipe (maxPipes in use, or descriptors short) it
// returns at once and the buffer carries on.
//
// Not inlined: keeps pump's frame small, as its goroutine idles in pump.
//
//go:noinline
func (c *Conn) spliceEcho(rc syscall.RawConn, idle time.Duration) error {
	p, err := getPipe(c.l.host)
	if err != nil {
		return nil
	}
	inPipe := 0
	defer func() { putPipe(p, inPipe == 0) }()
	l := c.l
	var extend func() // under an idle timeout: see writeStall
	var retry func(error) bool
	if idle > 0 {
		stall := newWriteStall(c.c, idle)
		extend, retry = stall.extend, stall.retry
	}
	for l.bus.DataCap() == 0 {
		if idle > 0 { // both ways: a peer that sends and never reads is idle too
			_ = c.c.SetDeadline(time.Now().Add(idle))
		}
		var n int
		var serr error
		if err := rc.Read(func(fd uintptr) bool {
			n, serr = splice(int(fd), p.w, p.size)
			return true // never wait: a drained socket ends the burst
		}); err != nil {
			return err
		}
		switch {
		case errors.Is(serr, unix.EAGAIN):
			return nil
		case serr != nil:
			return os.NewSyscallError("splice", serr)
		case n == 0:
			return nil // the end: pump's next read finds it
		}
		c.in.Add(uint64(n))
		l.bytesIn.Add(uint64(n))
		w, err := pipeOut(rc, p, n, extend, retry)
		inPipe = n - w
		c.out.Add(uint64(w))
		l.bytesOut.Add(uint64(w))
		if err != nil {
			return err
		}
	}
	return nil
}

// pipeOut splices the n bytes in p out to rc's socket (see writeOut).
func pipeOut(rc syscall.RawConn, p *pipe, n int, progress func(), retry func(error) bool) (done int, err error) {
	defer func() { splicedBytes.Add(uint64(done)) }()
	return writeOut(rc, n, "splice", func(fd, done int) (int, error) { return splice(p.r, fd, n-done) }, progress, retry)
}

// rawWrite writes b to rc's socket (see writeOut).
func rawWrite(rc syscall.RawConn, b []byte, progress func()) (int, error) {
	return writeOut(rc, len(b), "write", func(fd, done int) (int, error) {
		for {
			m, err := unix.Write(fd, b[done:])
			if err != unix.EINTR {
				return m, err
			}
		}
	}, progress, nil)
}

// writeOut moves n bytes to rc's socket with op, a non-blocking write of
// what is left after done bytes, waiting while the socket is full, and
// returns how many went. progress, when set, runs after each op that
// moved bytes; retry, when set, decides whether a failed wait (a
// deadline) is tried again.
func writeOut(rc syscall.RawConn, n int, name string, op func(fd, done int) (int, error), progress func(), retry func(error) bool) (done int, err error) {
	for done < n {
		var m int
		var oerr error
		if err := rc.Write(func(fd uintptr) bool {
			m, oerr = op(int(fd), done)
			return !errors.Is(oerr, unix.EAGAIN) // full: wait until writable
		}); err != nil {
			if retry != nil && retry(err) {
				continue
			}
			return done, err
		}
		if oerr == nil && m <= 0 {
			oerr = unix.EIO // nothing moved and no error: never spin
		}
		if oerr != nil {
			return done, os.NewSyscallError(name, oerr)
		}
		done += m
		if progress != nil {
			progress()
		}
	}
	return done, nil
}

// ackedBytes reports how many bytes the peer of c has acknowledged
// (TCP_INFO's bytes_acked): it grows while the peer reads, even when the
// kernel's send buffer is too full to wake a writer.
func ackedBytes(c *net.TCPConn) (uint64, bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, false
	}
	var info *unix.TCPInfo
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || gerr != nil {
		return 0, false
	}
	return info.Bytes_acked, true
}

func splice(in, out, max int) (int, error) {
	for {
		n, err := unix.Splice(in, nil, out, nil, max, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if err != unix.EINTR {
			return int(n), err
		}
	}
}

// pipeCopy copies src to dst until src ends, as io.Copy does between two
// *net.TCPConn on Linux (splice through a pipe), except that a pipe is held
// only while bytes flow: src is waited on with nothing attached, a pipe is
// taken from the pool when data is there and given back when src drains.
// io.Copy holds its pipe (two descriptors) for the connection's life, so
// an idle forwarded connection cost six descriptors; it now costs two.
// Past maxPipes, or past budget, a burst goes through a pooled buffer
// instead.
// With activity set, each read or write that moves bytes stores the time
// in it. An error of dst's side is a writeError.
func pipeCopy(budget fdBudget, dst, src *net.TCPConn, activity *atomic.Int64) (int64, error) {
	srcRC, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	var (
		p      *pipe
		inPipe int // bytes in p not yet written
		n      int
		serr   error
		r      rawReader // past the pipe cap: a buffer while bytes flow
	)
	bufRead := r.callback()
	release := func() {
		if p != nil {
			putPipe(p, inPipe == 0)
			p, inPipe = nil, 0
		}
		r.release()
	}
	defer release()
	read := func(fd uintptr) bool {
		if p == nil && r.buf == nil {
			p, _ = getPipe(budget)
		}
		if p == nil {
			return bufRead(fd)
		}
		n, serr = splice(int(fd), p.w, p.size)
		if errors.Is(serr, unix.EAGAIN) {
			release() // drained: wait with nothing attached
			return false
		}
		return true
	}
	var moved func() // with activity: each read or write that moves bytes
	if activity != nil {
		moved = func() { touch(activity) }
	}
	var written int64
	for {
		if err := srcRC.Read(read); err != nil {
			return written, err
		}
		if moved != nil {
			moved()
		}
		if p == nil {
			n, err := r.result()
			if errors.Is(err, io.EOF) {
				return written, nil // src ended
			}
			if err != nil {
				return written, err
			}
			w, err := rawWrite(dstRC, (*r.buf)[:n], moved)
			written += int64(w)
			if err != nil {
				return written, writeError{err}
			}
			continue
		}
		switch {
		case serr != nil:
			return written, os.NewSyscallError("splice", serr)
		case n == 0:
			return written, nil // src ended
		}
		w, err := pipeOut(dstRC, p, n, moved, nil)
		inPipe = n - w
		written += int64(w)
		if err != nil {
			return written, writeError{err}
		}
	}
}
