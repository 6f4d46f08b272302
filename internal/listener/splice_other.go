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
	return io.Copy(touchWriter{dst, activity}, touchReader{src, activity})
}

type touchReader struct {
	r        io.Reader
	activity *atomic.Int64
}

func (t touchReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if n > 0 {
		touch(t.activity)
	}
	return n, err
}

type touchWriter struct {
	w        io.Writer
	activity *atomic.Int64
}

func (t touchWriter) Write(p []byte) (int, error) {
	n, err := t.w.Write(p)
	if n > 0 {
		touch(t.activity)
	}
	if err != nil {
		err = writeError{err}
	}
	return n, err
}

// ackedBytes is Linux's TCP_INFO reading; elsewhere it is unknown.
func ackedBytes(*net.TCPConn) (uint64, bool) { return 0, false }
