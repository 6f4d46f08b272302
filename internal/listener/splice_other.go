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
func (c *Conn) spliceEcho(syscall.RawConn, time.Duration) error { return nil }

// pipeCopy is io.Copy elsewhere. With activity set, each read or write
// that moves bytes stores the time in it. An error of dst's side is a
// writeError.
func pipeCopy(_ fdBudget, dst, src *net.TCPConn, activity *atomic.Int64) (int64, error) {
	return io.Copy(touching{dst, activity}, touching{src, activity})
}

// ackedBytes is Linux's TCP_INFO reading; elsewhere it is unknown.
func ackedBytes(*net.TCPConn) (uint64, bool) { return 0, false }
