// Package gopool runs functions on goroutines kept for a while after their
// function returns, so that the next function runs on a goroutine whose
// stack has already grown.
//
// A new goroutine starts on a small stack and copies it each time it grows.
// A connection's goroutine that calls into gRPC grows it several times: in
// the bench's case i (a short connection each through the stream handler)
// that was about a tenth of the CPU of both the daemon and the Go handler.
package gopool

import (
	"sync"
	"time"
)

// Pool keeps the goroutines of the functions it ran, each for up to idle
// after its function returned, and gives them the next functions.
type Pool struct {
	work chan func()
	done chan struct{}
	once sync.Once
	wg   sync.WaitGroup
	idle time.Duration
}

// New returns a pool whose goroutines wait up to idle for their next
// function before they end.
func New(idle time.Duration) *Pool {
	return &Pool{work: make(chan func()), done: make(chan struct{}), idle: idle}
}

// Go runs f on a goroutine of the pool that waits for work, or on a new
// one. After Close it still runs f, on a new goroutine that ends with it.
func (p *Pool) Go(f func()) {
	select {
	case p.work <- f:
		return
	default:
	}
	p.wg.Add(1)
	go p.worker(f)
}

func (p *Pool) worker(f func()) {
	defer p.wg.Done()
	var t *time.Timer
	for {
		f()
		f = nil // let it go while waiting
		if t == nil {
			t = time.NewTimer(p.idle)
		} else {
			t.Reset(p.idle)
		}
		select {
		case f = <-p.work:
		case <-t.C:
			return
		case <-p.done:
			t.Stop()
			return
		}
	}
}

// Close ends the goroutines that wait for work, and the others once their
// function returns. It does not wait for them: see Wait.
func (p *Pool) Close() { p.once.Do(func() { close(p.done) }) }

// Wait waits, after Close, for the pool's goroutines to end: those whose
// function has not returned yet too. No Go may be called while it waits.
func (p *Pool) Wait() { p.wg.Wait() }
