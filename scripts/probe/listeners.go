package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// saved is what the probe knows of a listener the API acknowledged.
type saved struct{ name, addr string }

// persistent is the daemon of phases 2 and 4 and its directory.
type persistent struct {
	dir string
	d   *daemon
}

func (p *probe) startPersistent(ctx context.Context, dir string) (*daemon, error) {
	return p.startDaemon(ctx, filepath.Join(dir, "l.sock"), nil, "--state-dir", filepath.Join(dir, "state"), "--api-rate", "0")
}

// list returns the daemon's listeners by id.
func list(ctx context.Context, d *daemon) (map[string]*listenerdv1.Listener, error) {
	resp, err := d.c.ListListeners(ctx, &listenerdv1.ListListenersRequest{})
	if err != nil {
		return nil, err
	}
	out := map[string]*listenerdv1.Listener{}
	for _, l := range resp.GetListeners() {
		out[l.GetId()] = l
	}
	return out, nil
}

// listenersPhase is phase 2.
func (p *probe) listenersPhase(ctx context.Context, r *result) error {
	dir := p.dir("persist")
	d, err := p.startPersistent(ctx, dir)
	if err != nil {
		return err
	}
	stopped := false
	defer func() {
		if !stopped {
			_, _ = d.stop()
		}
	}()
	n := p.cfg.listeners
	var mu sync.Mutex
	created := map[string]saved{}
	var createErrs atomic.Int64
	var lastErr atomic.Value
	parallel(16, n, func(i int) {
		name := ""
		if i%3 == 0 {
			name = fmt.Sprintf("many-%d", i)
		}
		resp, err := d.c.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: name, Spec: &listenerdv1.ListenerSpec{}})
		if err != nil {
			createErrs.Add(1)
			lastErr.Store(err.Error())
			return
		}
		l := resp.GetListener()
		mu.Lock()
		created[l.GetId()] = saved{name: l.GetName(), addr: l.GetStatus().GetBoundAddress()}
		mu.Unlock()
	})
	r.count("created", len(created))
	if e := createErrs.Load(); e > 0 {
		r.fail("%d creates failed (last: %v)", e, lastErr.Load())
	}
	listed, err := list(ctx, d)
	if err != nil {
		return err
	}
	r.count("listed", len(listed))
	p.check(r, "after the creates", listed, created, nil)

	ids := make([]string, 0, len(created))
	for id := range created {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	closed := map[string]bool{}
	var closeErrs atomic.Int64
	parallel(16, len(ids)/2, func(i int) {
		id := ids[2*i]
		if _, err := d.c.CloseListener(ctx, &listenerdv1.CloseListenerRequest{Id: id, Force: true}); err != nil {
			closeErrs.Add(1)
			lastErr.Store(err.Error())
			return
		}
		mu.Lock()
		closed[id] = true
		mu.Unlock()
	})
	r.count("closed", len(closed))
	if e := closeErrs.Load(); e > 0 {
		r.fail("%d closes failed (last: %v)", e, lastErr.Load())
	}
	if listed, err = list(ctx, d); err != nil {
		return err
	}
	p.check(r, "after the closes", listed, created, closed)
	code, err := d.stop()
	stopped = true
	if code != 0 || err != nil {
		r.fail("SIGTERM: exit %d, %v", code, err)
	}
	if d, err = p.startPersistent(ctx, dir); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	if listed, err = list(ctx, d); err != nil {
		return err
	}
	r.count("after restart", len(listed))
	p.check(r, "after the restart", listed, created, closed)
	if n := d.panics(); n > 0 {
		r.fail("%d panic lines on stderr", n)
	}
	p.persist = &persistent{dir: dir, d: d}
	return nil
}

// check compares a listing with what was acknowledged: every create not
// closed is there with its name and address, every close is gone, and
// nothing else is listed.
func (p *probe) check(r *result, when string, listed map[string]*listenerdv1.Listener, created map[string]saved, closed map[string]bool) {
	for id, s := range created {
		l, ok := listed[id]
		switch {
		case closed[id] && ok:
			r.fail("%s: %s was closed (acknowledged) and is listed", when, id)
		case closed[id]:
		case !ok:
			r.fail("%s: %s was created (acknowledged) and is missing", when, id)
		case l.GetName() != s.name:
			r.fail("%s: %s has name %q, created as %q", when, id, l.GetName(), s.name)
		case l.GetStatus().GetBoundAddress() != s.addr:
			r.fail("%s: %s is at %q (%v, %s), created at %s", when, id, l.GetStatus().GetBoundAddress(),
				l.GetStatus().GetState(), l.GetStatus().GetLastError(), s.addr)
		}
	}
	for id := range listed {
		if _, ok := created[id]; !ok {
			r.fail("%s: %s is listed and was never created", when, id)
		}
	}
}

// parallel runs f(0..n-1) on k goroutines.
func parallel(k, n int, f func(int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range k {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				f(i)
			}
		})
	}
	wg.Wait()
}

// kills is phase 4: the daemon of phase 2, SIGKILLed in the middle of a
// burst of creates, closes and connections, and restarted on its state.
func (p *probe) kills(ctx context.Context, r *result) error {
	if p.persist == nil {
		dir := p.dir("persist")
		d, err := p.startPersistent(ctx, dir)
		if err != nil {
			return err
		}
		p.persist = &persistent{dir: dir, d: d}
	}
	ps := p.persist
	defer func() { _, _ = ps.d.stop() }()
	rng := rand.New(rand.NewPCG(1, 2))
	model, err := list(ctx, ps.d)
	if err != nil {
		return err
	}
	var acked, lost, resurrected, moved, unacked, failedBack int
	for round := range p.cfg.kills {
		if ctx.Err() != nil {
			break
		}
		d := ps.d
		var mu sync.Mutex
		created := map[string]saved{}
		closed := map[string]bool{}
		uncertain := map[string]bool{} // a close sent and not answered
		pool := make([]string, 0, len(model))
		for id, l := range model {
			if l.GetStatus().GetState() == listenerdv1.State_STATE_LISTENING {
				pool = append(pool, id)
			}
		}
		sort.Strings(pool)
		rng.Shuffle(len(pool), func(i, j int) { pool[i], pool[j] = pool[j], pool[i] })
		addrs := make([]string, 0, len(pool))
		for _, id := range pool {
			addrs = append(addrs, model[id].GetStatus().GetBoundAddress())
		}
		var ops atomic.Int64
		killAt := int64(20 + rng.IntN(180))
		dead := make(chan struct{})
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				wr := rand.New(rand.NewPCG(uint64(round), uint64(w)))
				for {
					select {
					case <-dead:
						return
					default:
					}
					mu.Lock()
					var id string
					if wr.IntN(10) < 4 && len(pool) > 0 {
						id, pool = pool[len(pool)-1], pool[:len(pool)-1]
					}
					mu.Unlock()
					if id != "" {
						_, err := d.c.CloseListener(ctx, &listenerdv1.CloseListenerRequest{Id: id, Force: true})
						mu.Lock()
						if err == nil {
							closed[id] = true
							ops.Add(1)
						} else {
							uncertain[id] = true
						}
						mu.Unlock()
						continue
					}
					resp, err := d.c.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{}})
					if err != nil {
						continue // unanswered: it may or may not be there
					}
					l := resp.GetListener()
					mu.Lock()
					created[l.GetId()] = saved{name: l.GetName(), addr: l.GetStatus().GetBoundAddress()}
					pool = append(pool, l.GetId())
					mu.Unlock()
					ops.Add(1)
				}
			})
		}
		for w := range 4 { // connections to the listeners, open while the daemon dies
			wg.Go(func() {
				buf := make([]byte, 16)
				for i := 0; ; i++ {
					select {
					case <-dead:
						return
					default:
					}
					if len(addrs) == 0 {
						return
					}
					c, err := net.DialTimeout("tcp", addrs[(i*4+w)%len(addrs)], guard)
					if err != nil {
						continue
					}
					_ = c.SetDeadline(time.Now().Add(guard))
					_, _ = c.Write(buf)
					c.Close()
				}
			})
		}
		deadline := time.Now().Add(guard)
		for ops.Load() < killAt && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond) // polling the burst's own counter
		}
		d.kill()
		close(dead)
		wg.Wait()
		mu.Lock()
		acked += len(created) + len(closed)
		mu.Unlock()
		nd, err := p.startPersistent(ctx, ps.dir)
		if err != nil {
			return fmt.Errorf("restart after kill %d: %w", round+1, err)
		}
		ps.d = nd
		listed, err := list(ctx, nd)
		if err != nil {
			return err
		}
		for id, l := range model {
			switch _, ok := listed[id]; {
			case closed[id] && ok:
				resurrected++
				r.fail("kill %d: %s closed (acknowledged) came back", round+1, id)
			case closed[id] || uncertain[id]:
			case !ok:
				lost++
				r.fail("kill %d: %s (from before the burst) is missing", round+1, id)
			case listed[id].GetStatus().GetBoundAddress() != l.GetStatus().GetBoundAddress():
				moved++
				r.fail("kill %d: %s moved from %s to %q (%s)", round+1, id, l.GetStatus().GetBoundAddress(),
					listed[id].GetStatus().GetBoundAddress(), listed[id].GetStatus().GetLastError())
			}
		}
		for id, s := range created {
			l, ok := listed[id]
			switch {
			case closed[id] && ok:
				resurrected++
				r.fail("kill %d: %s closed (acknowledged) came back", round+1, id)
			case closed[id] || uncertain[id]:
			case !ok:
				lost++
				r.fail("kill %d: %s created (acknowledged) is missing", round+1, id)
			case l.GetStatus().GetBoundAddress() != s.addr:
				moved++
				r.fail("kill %d: %s moved from %s to %q (%s)", round+1, id, s.addr, l.GetStatus().GetBoundAddress(), l.GetStatus().GetLastError())
			}
		}
		for id, l := range listed {
			if _, ok := model[id]; !ok {
				if _, ok := created[id]; !ok {
					unacked++ // a create the kill cut off before its answer
				}
			}
			if l.GetStatus().GetState() == listenerdv1.State_STATE_FAILED {
				failedBack++
			}
		}
		model = listed
		p.logf("  kill %d after %d acknowledged changes: %d listeners back", round+1, ops.Load(), len(listed))
	}
	r.count("kills", p.cfg.kills)
	r.count("acknowledged changes", acked)
	r.count("lost", lost)
	r.count("closed came back", resurrected)
	r.count("moved", moved)
	r.count("unanswered creates kept", unacked)
	r.count("back FAILED", failedBack)
	r.count("listeners at the end", len(model))
	if n := ps.d.panics(); n > 0 {
		r.fail("%d panic lines on stderr", n)
	}
	return nil
}
