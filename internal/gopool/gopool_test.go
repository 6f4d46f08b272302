package gopool

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/listenerd/listenerd/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A goroutine whose function returned waits for the next and runs it:
// one goroutine runs many functions one after the other.
func TestReusesGoroutines(t *testing.T) {
	p := New(time.Hour)
	defer func() { p.Close(); p.Wait() }()
	gids := make(chan uint64, 100)
	p.Go(func() { gids <- goid() })
	for range 99 {
		p.work <- func() { gids <- goid() } // taken only by a goroutine that waits
	}
	p.Close()
	p.Wait()
	close(gids)
	seen := map[uint64]bool{}
	for g := range gids {
		seen[g] = true
	}
	if len(seen) != 1 {
		t.Fatalf("100 functions one after the other ran on %d goroutines, want 1", len(seen))
	}
}

// Functions that run at once each get a goroutine: Go never waits.
func TestConcurrentFunctionsDoNotWait(t *testing.T) {
	p := New(time.Hour)
	defer func() { p.Close(); p.Wait() }()
	release := make(chan struct{})
	var running atomic.Int32
	for range 10 {
		p.Go(func() { running.Add(1); <-release })
	}
	testkit.Eventually(t, func() bool { return running.Load() == 10 }, "10 functions running at once")
	close(release)
}

// An idle goroutine ends after the idle time; Close ends the others, and
// Go still runs functions after it.
func TestIdleAndClose(t *testing.T) {
	p := New(time.Millisecond)
	p.Go(func() {})
	p.wg.Wait() // ends by itself, idle
	p = New(time.Hour)
	p.Go(func() {})
	p.Close()
	p.Wait()
	ran := make(chan struct{})
	p.Go(func() { close(ran) })
	<-ran
	p.Wait()
}

func goid() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	// "goroutine 123 [running]:"
	var n uint64
	for _, c := range b[len("goroutine "):] {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + uint64(c-'0')
	}
	return n
}
