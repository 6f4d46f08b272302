//go:build !linux

package testkit

import (
	"net"
	"testing"
)

// BlackHole is Linux's: elsewhere the test is skipped.
func BlackHole(t testing.TB) string {
	t.Skip("a black-hole address needs Linux's accept-queue behaviour")
	return ""
}

// Vanish is Linux's: elsewhere the test is skipped.
func Vanish(t testing.TB, c *net.TCPConn) {
	t.Skip("a vanishing peer needs Linux's TCP_LINGER2")
}
