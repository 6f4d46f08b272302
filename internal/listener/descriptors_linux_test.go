package listener

import (
	"sync/atomic"
	"testing"
)

// budgetOf is a descriptor budget of n.
type budgetOf struct{ n, held atomic.Int64 }

func (b *budgetOf) takeFDs(n int64) bool {
	if b.held.Add(n) > b.n.Load() {
		b.held.Add(-n)
		return false
	}
	return true
}

func (b *budgetOf) giveFDs(n int64) { b.held.Add(-n) }

// A pipe's two descriptors come out of the budget: with no room, none is
// made (the burst goes through the buffer), and one closed gives them
// back.
func TestPipesCountInTheBudget(t *testing.T) {
	for len(pipePool) > 0 { // made by other tests, and counted nowhere
		putPipe(<-pipePool, false)
	}
	b := &budgetOf{}
	b.n.Store(3)
	p, err := getPipe(b)
	if err != nil || b.held.Load() != 2 {
		t.Fatalf("a pipe within the budget: %v, %d held", err, b.held.Load())
	}
	if q, err := getPipe(b); err == nil {
		putPipe(q, false)
		t.Fatal("a pipe past the budget")
	}
	putPipe(p, false)
	if b.held.Load() != 0 {
		t.Fatalf("%d descriptors still counted after the pipe closed", b.held.Load())
	}
}
