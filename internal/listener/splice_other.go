//go:build !linux

package listener

import (
	"sync/atomic"
	"syscall"
	"time"
)

// splicedBytes counts the bytes echoed by splice: none without Linux.
var splicedBytes atomic.Uint64

// spliceEcho is Linux's bulk echo in the kernel; elsewhere the buffer
// carries on.
func (c *conn) spliceEcho(syscall.RawConn, time.Duration) error { return nil }
