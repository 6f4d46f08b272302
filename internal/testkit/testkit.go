// Package testkit holds the helpers that listenerd's tests share: a buffer
// safe for concurrent writers, short temporary directories for unix
// sockets, a test certificate authority, dial helpers and a bounded poll.
//
// It is imported only by _test.go files, and it imports no listenerd
// package, so that the tests of every package, in-package tests included,
// can use it without an import cycle (rules_test.go checks both).
package testkit

import "time"

// Guard bounds every wait of the kit. It is a safety net against a hung
// test, never a timing assertion: a correct program passes however slow
// the machine, and only a stuck one runs into it.
const Guard = 30 * time.Second

// step is the sleep between two tries of Eventually.
const step = 5 * time.Millisecond
