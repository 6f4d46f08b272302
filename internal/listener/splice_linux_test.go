package listener

import "testing"

// Pipes are capped, pooled or in use: past maxPipes none is made, and one
// given back can be taken again.
func TestPipeCap(t *testing.T) {
	var held []*pipe
	defer func() {
		for _, p := range held {
			putPipe(p, false)
		}
	}()
	for len(held) < maxPipes {
		p, err := getPipe()
		if err != nil {
			t.Fatalf("pipe %d of %d: %v", len(held)+1, maxPipes, err)
		}
		held = append(held, p)
	}
	if p, err := getPipe(); err == nil {
		held = append(held, p)
		t.Fatalf("got pipe %d, over the cap of %d", len(held), maxPipes)
	}
	putPipe(held[0], true) // into the pool, still counted
	held = held[1:]
	p, err := getPipe()
	if err != nil {
		t.Fatalf("a pooled pipe: %v", err)
	}
	held = append(held, p)
	if p.size <= 0 {
		t.Fatalf("pipe size %d", p.size)
	}
}
