package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// descriptors is phase 7: a daemon with 64 descriptors, 100 connections
// held on an echo listener.
func (p *probe) descriptors(ctx context.Context, r *result) error {
	dir := p.dir("fds")
	d, err := p.startDaemon(ctx, filepath.Join(dir, "l.sock"), []string{"prlimit", "--nofile=64:64", "--"}, "--ephemeral", "--api-rate", "0")
	if err != nil {
		return err
	}
	defer func() { _, _ = d.stop() }()
	resp, err := d.c.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: "held", Spec: &listenerdv1.ListenerSpec{
		Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Echo{Echo: &listenerdv1.EchoHandler{}}}}})
	if err != nil {
		return err
	}
	addr := resp.GetListener().GetStatus().GetBoundAddress()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	served, rejected := 0, 0
	for i := range 100 {
		c, err := net.DialTimeout("tcp", addr, guard)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		conns = append(conns, c)
		_ = c.SetDeadline(time.Now().Add(guard))
		b := []byte{byte(i)}
		if _, err := c.Write(b); err == nil {
			if _, err = io.ReadFull(c, b); err == nil {
				served++
				continue
			}
		}
		rejected++
	}
	st, err := d.c.GetListener(ctx, &listenerdv1.GetListenerRequest{Id: "held"})
	if err != nil {
		return err
	}
	s := st.GetListener().GetStatus()
	r.count("held", len(conns))
	r.count("served", served)
	r.count("rejected", rejected)
	r.count("daemon open", s.GetActiveConnections())
	if int(s.GetActiveConnections()) != served || int(s.GetRejectedConnections()) != rejected {
		r.fail("the daemon says %d open, %d rejected; clients saw %d served, %d rejected", s.GetActiveConnections(), s.GetRejectedConnections(), served, rejected)
	}
	code, out, errOut := p.ctl(ctx, d, "ls")
	if code != 0 || !strings.Contains(out, "held") {
		r.fail("ctl ls with the descriptors taken: exit %d, %q %q", code, out, errOut)
	}
	r.count("ctl ls exit", code)
	code, _, errOut = p.ctl(ctx, d, "listen")
	r.count("ctl listen exit", code)
	r.note("ctl listen: %s", strings.TrimSpace(errOut))
	if code != 1 {
		r.fail("ctl listen with the descriptors taken: exit %d (want 1, RESOURCE_EXHAUSTED): %s", code, errOut)
	}
	_, err = d.c.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{}})
	if status.Code(err) != codes.ResourceExhausted {
		r.fail("CreateListener with the descriptors taken: %v, want RESOURCE_EXHAUSTED", err)
	}
	// Once the connections are gone, a create works again.
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	var again error = errors.New("not tried")
	for range 1000 {
		if _, again = d.c.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{}}); status.Code(again) != codes.ResourceExhausted {
			break
		}
		time.Sleep(10 * time.Millisecond) // polling until the daemon has closed them
	}
	if again != nil {
		r.fail("CreateListener after the connections closed: %v", again)
	}
	if code, err := d.stop(); code != 0 || err != nil {
		r.fail("exit %d on SIGTERM: %v", code, err)
	}
	if n := d.panics(); n > 0 {
		r.fail("%d panic lines on stderr: %s", n, clip(d.stderr.String(), 300))
	}
	return nil
}

// leaks is phase 8: the first daemon, every listener closed and the
// watcher gone, is back to its starting descriptors and goroutines.
func (p *probe) leaks(ctx context.Context, r *result) error {
	d := p.main
	if p.st != nil {
		p.st.cancelW()
		<-p.st.wDone
	}
	ls, err := list(ctx, d)
	if err != nil {
		return err
	}
	for id := range ls {
		if _, err := d.c.CloseListener(ctx, &listenerdv1.CloseListenerRequest{Id: id, Force: true}); err != nil {
			r.fail("close %s: %v", id, err)
		}
	}
	// Go keeps the pipes of its splice (the forward handler) in a pool
	// that only garbage collections empty (an idle daemon collects every
	// two minutes, and a pooled pipe outlives one): as many as the forward
	// connections open at once may stay, two pipes of two descriptors each
	// (one a direction), counted apart.
	const fdSlack, gSlack = 2, 5
	pipeSlack := 4 * p.cfg.clients
	fds, g := d.settle(ctx, p.baseFDs, p.baseGoroutines, fdSlack+pipeSlack, gSlack)
	if pipes := d.fdSet()["pipe"] - p.baseFDSet["pipe"]; pipes > 0 && pipes <= pipeSlack {
		r.note("%d pipe descriptors more than at the start: Go's splice pipe pool, not counted", pipes)
		fds -= pipes
		fds, g = d.settle(ctx, p.baseFDs+pipes, p.baseGoroutines, fdSlack, gSlack)
		fds -= pipes
	}
	r.count("listeners closed", len(ls))
	r.count("fds start/end", fmt.Sprintf("%d/%d", p.baseFDs, fds))
	r.count("goroutines start/end", fmt.Sprintf("%d/%d", p.baseGoroutines, g))
	r.count("rss", d.rss())
	if fds > p.baseFDs+fdSlack {
		var more []string
		for k, n := range d.fdSet() {
			if n > p.baseFDSet[k] {
				more = append(more, fmt.Sprintf("%s +%d", k, n-p.baseFDSet[k]))
			}
		}
		sort.Strings(more)
		r.fail("descriptors: %d at the start, %d at the end: %s", p.baseFDs, fds, strings.Join(more, ", "))
	}
	if g > p.baseGoroutines+gSlack {
		r.fail("goroutines: %d at the start, %d at the end", p.baseGoroutines, g)
	}
	return nil
}
