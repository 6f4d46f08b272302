//go:build !linux

package listener

import (
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"
)

// splicedBytes counts the bytes echoed by splice: none without Linux.
var splicedBytes atomic.Uint64

// spliceEcho is Linux's bulk echo in the kernel; elsewhere the buffer
// carries on.
func (c *conn) spliceEcho(syscall.RawConn, time.Duration) error { return nil }

// pipeCopy is io.Copy elsewhere. With activity set, each read or write
// that moves bytes stores the time in it. An error of dst's side is a
// writeError.
func pipeCopy(dst, src *net.TCPConn, activity *atomic.Int64) (int64, error) {
	return io.Copy(touching{dst, activity}, touching{src, activity})
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

// ackedBytes is Linux's TCP_INFO reading; elsewhere it is unknown.
func ackedBytes(*net.TCPConn) (uint64, bool) { return 0, false }
