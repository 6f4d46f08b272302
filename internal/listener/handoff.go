package listener

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"time"

	"github.com/listenerd/listenerd/internal/events"
)

// An upgrade hands every listening socket to a new daemon process, which
// accepts on it while this one drains (the server's upgrade.go drives
// it). On the old process: PrepareHandoff freezes the table and returns
// the records and a copy of each listening socket; Handoff.Stop stops
// accepting (the sockets stay open in the new process: nobody is refused)
// and returns each listener's counters; Handoff.Drain lets the open
// connections finish. On the new process: Adopt builds the listeners on the
// sockets it was given, and Adoption.Start starts accepting.

// Counters are what a listener has counted, handed to the process that
// goes on with it so that its connection numbers stay unique and its
// counters go on.
type Counters struct {
	NextConn  uint64 // the last connection number given
	Accepted  uint64
	Rejected  [events.NumRejectReasons]uint64
	BytesIn   uint64
	BytesOut  uint64
	LastError string
}

// Handoff is an upgrade in progress on the process that hands over.
type Handoff struct {
	m *Manager
	// Records are the listeners' records (persist.go's format), oldest
	// first; Files a copy of the listening socket of each that listens,
	// by id, for the caller to send and close.
	Records []json.RawMessage
	Files   map[string]*os.File
	Order   []string // the ids of Files, oldest first
	handed  []*Listener
	stopped bool
}

// PrepareHandoff freezes the table for an upgrade: from now on no change
// is taken (ErrShuttingDown), so the records returned stay true, until
// Cancel. Listeners keep accepting.
func (m *Manager) PrepareHandoff() (*Handoff, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.shutting {
		return nil, ErrShuttingDown
	}
	recs, err := m.recordsLocked()
	if err != nil {
		return nil, err
	}
	h := &Handoff{m: m, Records: recs, Files: map[string]*os.File{}}
	for _, l := range m.sortedLocked() {
		if l.closing() || l.ln == nil || State(l.state.Load()) != StateListening {
			continue
		}
		f, err := l.ln.File()
		if err != nil {
			h.closeFiles()
			return nil, fmt.Errorf("listener %s: socket for the upgrade: %w", l.id, err)
		}
		h.Files[l.id] = f
		h.Order = append(h.Order, l.id)
		h.handed = append(h.handed, l)
	}
	m.shutting = true
	return h, nil
}

func (h *Handoff) closeFiles() {
	for _, f := range h.Files {
		_ = f.Close()
	}
}

// Cancel gives up an upgrade that has not stopped anything: the table
// takes changes again.
func (h *Handoff) Cancel() {
	h.closeFiles()
	if h.stopped {
		return
	}
	h.m.mu.Lock()
	h.m.shutting = false
	h.m.mu.Unlock()
}

// Stop stops every handed listener accepting, at once; a connection the
// kernel queues from now on is the new process's. Connections waiting in a
// QUEUE listener's queue are turned away (LISTENER_CLOSED), as in a close.
// It returns each listener's counters, as they stand once nothing more can
// be accepted here.
func (h *Handoff) Stop() map[string]Counters {
	h.stopped = true
	h.closeFiles() // sent: the new process has its own copies
	out := make(map[string]Counters, len(h.handed))
	h.m.mu.Lock()
	for _, l := range h.m.byID {
		if State(l.state.Load()) == StateFailed && !l.closing() {
			l.mu.Lock()
			out[l.id] = Counters{LastError: l.lastErr}
			l.mu.Unlock()
		}
	}
	h.m.mu.Unlock()
	for _, l := range h.handed {
		l.beginClose() // closes this process's copy of the socket only
		l.mu.Lock()
		c := Counters{NextConn: l.nextConn, Accepted: l.accepted, LastError: l.lastErr}
		l.mu.Unlock()
		for i := range l.rejected {
			c.Rejected[i] = l.rejected[i].Load()
		}
		c.BytesIn, c.BytesOut = l.bytesIn.Load(), l.bytesOut.Load()
		out[l.id] = c
	}
	return out
}

// Drain waits for the connections open here to end by themselves, for up
// to timeout, destroys what is left (DAEMON_SHUTDOWN), and waits for every
// goroutine the manager owns. The handed listeners publish no
// listener_closed: they go on in the new process. Listeners that were
// closing before the upgrade finish their close here, within timeout too.
func (h *Handoff) Drain(timeout time.Duration) {
	m := h.m
	m.mu.Lock()
	ls := slices.Collect(maps.Values(m.byID))
	m.mu.Unlock()
	var closing []*Listener
	for _, l := range ls {
		if l.closing() {
			closing = append(closing, l)
		}
	}
	t := time.NewTimer(max(timeout, 0))
	defer t.Stop()
	expired := timeout <= 0
	for _, l := range closing {
		if expired {
			break
		}
		select {
		case <-l.allGone:
		case <-t.C:
			expired = true
		}
	}
	if expired {
		for _, l := range closing {
			l.killAll(events.CloseDaemonShutdown)
		}
	}
	for _, l := range h.handed {
		l.conWG.Wait()
		l.stopPool()
	}
	m.wg.Wait()
	m.endHandover()
}

// Adoption is an upgrade in progress on the process that takes over: the
// listeners are built and listed, and accept once Start is called.
type Adoption struct {
	m      *Manager
	ls     []*Listener // to start
	failed []*Listener // adopted FAILED
}

// Adopt builds the listeners of records on the listening sockets of files
// (by listener id; Adopt closes them), as Restore does with binds: same
// ids, names and ports, nothing bound. A listener without a socket, or
// whose spec the current checks or policy refuse, comes back FAILED. Call
// it on a fresh manager, before anything is published on its bus; nothing
// accepts until Start.
func (m *Manager) Adopt(ctx context.Context, raws []json.RawMessage, files map[string]*os.File) (*Adoption, error) {
	defer func() {
		for _, f := range files {
			_ = f.Close()
		}
	}()
	if err := ValidateRecords(raws); err != nil {
		return nil, err
	}
	a := &Adoption{m: m}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.shutting || len(m.byID) > 0 {
		return nil, errors.New("adopt: the manager is not fresh")
	}
	for _, raw := range raws {
		r, spec, _ := fromRecord(raw)
		h, err := m.handlers.validateSpec(spec)
		if err != nil {
			err = staleSpec(err)
		}
		var ln *net.TCPListener
		if f := files[r.ID]; f != nil && err == nil {
			ln, err = adoptSocket(f, spec, m.policy)
		} else if err == nil {
			err = errors.New("failed before the upgrade")
		}
		l := m.newListener(r.ID, r.Name, spec, h, ln, r.Created)
		l.declared.Store(r.Declared)
		if ln == nil {
			l.boundPort = r.BoundPort
			l.state.Store(int32(StateFailed))
			l.lastErr = err.Error()
			closeOnce(l.acceptDone)
		}
		m.insertLocked(l)
		if ln != nil {
			a.ls = append(a.ls, l)
		} else {
			a.failed = append(a.failed, l)
		}
	}
	return a, nil
}

// adoptSocket makes a listener of a listening TCP socket handed over, and
// checks it against policy.
func adoptSocket(f *os.File, spec Spec, policy Policy) (*net.TCPListener, error) {
	fl, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("adopt socket: %w", err)
	}
	ln, ok := fl.(*net.TCPListener)
	if !ok {
		fl.Close()
		return nil, fmt.Errorf("adopt socket: a %T, not a TCP listener", fl)
	}
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	if err := policy.Check(ap.Addr().Unmap(), spec.Port); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Listening returns how many adopted listeners accept once started.
func (a *Adoption) Listening() int { return len(a.ls) }

// Start gives each adopted listener its counters from the old process and
// starts accepting.
func (a *Adoption) Start(counters map[string]Counters) {
	m := a.m
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range a.failed {
		if c, ok := counters[l.id]; ok && c.LastError != "" {
			l.setLastError(errors.New(c.LastError))
		}
	}
	for _, l := range a.ls {
		c := counters[l.id]
		l.mu.Lock()
		l.nextConn, l.accepted, l.lastErr = c.NextConn, c.Accepted, c.LastError
		l.mu.Unlock()
		for i := range l.rejected {
			l.rejected[i].Store(c.Rejected[i])
		}
		l.bytesIn.Store(c.BytesIn)
		l.bytesOut.Store(c.BytesOut)
		l.log.Info("listener adopted", "next_conn", c.NextConn)
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			l.acceptLoop()
		}()
	}
	a.ls = nil
}

// Abandon gives up an adoption that was never started: its sockets are
// closed (this process's copies) and the manager can shut down.
func (a *Adoption) Abandon() {
	for _, l := range a.ls {
		_ = l.ln.Close()
		closeOnce(l.acceptDone)
	}
	a.ls = nil
}
