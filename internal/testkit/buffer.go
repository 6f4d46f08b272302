package testkit

import (
	"bytes"
	"sync"
)

// Buffer is an io.Writer safe for concurrent writers (a daemon's log, a
// command's stdout and stderr) whose content can be read at any time. The
// zero value is ready to use.
type Buffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	writes  int // Write calls
	trigger []byte
	fire    func()
}

// Write appends p. When the content then holds the string given to
// OnOutput for the first time, Write calls that function, after the
// content is updated and without holding the buffer, so that the function
// may read it.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	b.writes++
	n, err := b.buf.Write(p)
	fire := b.due()
	b.mu.Unlock()
	if fire != nil {
		fire()
	}
	return n, err
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Writes returns the number of Write calls so far.
func (b *Buffer) Writes() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.writes
}

// OnOutput makes b call fire once, as soon as its content contains s: at
// once when it already does, else from the Write that makes it so. A later
// call replaces an earlier one that has not fired yet.
func (b *Buffer) OnOutput(s string, fire func()) {
	b.mu.Lock()
	b.trigger, b.fire = []byte(s), fire
	fire = b.due()
	b.mu.Unlock()
	if fire != nil {
		fire()
	}
}

// due returns the function to fire, and forgets it, when the content holds
// the trigger. b.mu is held.
func (b *Buffer) due() func() {
	if b.fire == nil || !bytes.Contains(b.buf.Bytes(), b.trigger) {
		return nil
	}
	fire := b.fire
	b.fire = nil
	return fire
}
