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

// pipeCopy is io.Copy elsewhere.
func pipeCopy(dst, src *net.TCPConn) (int64, error) { return io.Copy(dst, src) }
