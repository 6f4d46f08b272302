//go:build !linux

package server

import "net"

// peerOf is Linux's naming of a socket's listening process; elsewhere it
// says only that one answers.
func peerOf(*net.UnixConn) string { return "a process" }
