//go:build !linux

package testkit

import "testing"

// BlackHole is Linux's: elsewhere the test is skipped.
func BlackHole(t testing.TB) string {
	t.Skip("a black-hole address needs Linux's accept-queue behaviour")
	return ""
}
