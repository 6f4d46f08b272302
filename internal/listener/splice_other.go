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

// pipeCopy is io.Copy elsewhere. With activity set, each read that moves
// bytes stores the time in it.
func pipeCopy(dst, src *net.TCPConn, activity *atomic.Int64) (int64, error) {
	if activity == nil {
		return io.Copy(dst, src)
	}
	return io.Copy(dst, touchReader{src, activity})
}

type touchReader struct {
	r        io.Reader
	activity *atomic.Int64
}

func (t touchReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if n > 0 {
		t.activity.Store(time.Now().UnixNano())
	}
	return n, err
}
