package testkit

import (
	"testing"
	"time"
)

// Eventually polls cond, with a short sleep between tries, until it holds,
// and fails the test naming what was awaited if it still does not after
// Guard. It is for states nothing announces; when something does (a
// channel, an event stream), wait on that instead. Call it from the test's
// goroutine, as t.Fatal requires.
func Eventually(t testing.TB, cond func() bool, what string) {
	t.Helper()
	EventuallyWithin(t, Guard, cond, what)
}

// EventuallyWithin is Eventually with another guard, for tests whose own
// guard is longer (such as those running real binaries built with -race).
// The guard is a safety net, never a timing assertion. The poll is bounded
// twice: by the guard, and by a count of tries (guard/step), so that a
// clock that stalls cannot make it spin forever.
func EventuallyWithin(t testing.TB, guard time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(guard)
	maxTries := int64(guard / step)
	for try := int64(0); ; try++ {
		if cond() {
			return
		}
		if try >= maxTries || !time.Now().Before(deadline) {
			t.Fatalf("still waiting for %s after %v", what, guard)
			return
		}
		time.Sleep(step)
	}
}
