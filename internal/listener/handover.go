package listener

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/listenerd/listenerd/internal/events"
)

// Handover: a handler attached over the daemon's unix socket may take the
// sockets themselves instead of their bytes. They go over a side unix
// connection (SOCK_SEQPACKET) that the handler opens with a one-time
// secret: each connection is one message, its id and addresses, carrying
// the descriptor (SCM_RIGHTS). The daemon keeps its own copy, counted
// toward the listener's limits, until the handler says "closed <id>" or
// its side connection ends; then it reads the bytes each way from
// TCP_INFO and lets go.

// ErrHandoverRefused is a side connection the daemon will not serve.
var ErrHandoverRefused = errors.New("handover refused")

// handoverFirstWait bounds the wait for a side connection's secret.
const handoverFirstWait = 10 * time.Second

// sideConn is one handler's side connection.
type sideConn struct {
	c  *net.UnixConn
	a  *Attachment
	mu sync.Mutex // one send at a time; guards sessions
	// sessions are the connections handed over on it, by number.
	sessions map[uint64]*Session
	gone     bool
}

// newSecret returns a one-time secret for a handover attachment.
func newSecret() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ServeHandover accepts handlers' side connections on ln until ln is
// closed; Shutdown waits for it and ends the side connections.
func (m *Manager) ServeHandover(ln *net.UnixListener) {
	m.mu.Lock()
	m.handoverLn = ln
	m.mu.Unlock()
	m.sideWG.Add(1)
	go func() {
		defer m.sideWG.Done()
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				m.log.Warn("handover: accept failed", "err", err)
				time.Sleep(minBackoff)
				continue
			}
			m.sideWG.Add(1)
			go func() {
				defer m.sideWG.Done()
				if err := m.serveSide(c); err != nil {
					m.log.Warn("handover: side connection refused", "err", err)
				}
			}()
		}
	}()
}

// serveSide authenticates a side connection and reads its closes until
// it ends.
func (m *Manager) serveSide(c *net.UnixConn) error {
	if err := peerAllowed(c); err != nil {
		c.Close()
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(handoverFirstWait))
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		c.Close()
		return fmt.Errorf("%w: no secret: %v", ErrHandoverRefused, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	m.mu.Lock()
	a := m.secrets[string(bytes.TrimSpace(buf[:n]))]
	delete(m.secrets, string(bytes.TrimSpace(buf[:n])))
	m.mu.Unlock()
	if a == nil {
		c.Close()
		return fmt.Errorf("%w: unknown or used secret", ErrHandoverRefused)
	}
	side := &sideConn{c: c, a: a, sessions: map[uint64]*Session{}}
	m.mu.Lock()
	m.sides[side] = true
	m.mu.Unlock()
	if _, err := c.Write([]byte("ok")); err != nil || !a.setSide(side) {
		c.Close()
		side.end()
		m.dropSide(side)
		return nil
	}
	defer m.dropSide(side)
	defer side.end()
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil // the handler went away: what it held goes with it
		}
		id, ok := strings.CutPrefix(string(bytes.TrimSpace(buf[:n])), "closed ")
		if !ok {
			m.log.Warn("handover: unknown message from a handler", "handler", a.id, "msg", Clip(string(buf[:n])))
			continue
		}
		_, num, ok := events.ParseConnID(id)
		if !ok {
			continue
		}
		side.mu.Lock()
		s := side.sessions[num]
		side.mu.Unlock()
		if s != nil && s.c.ID() == id {
			s.c.close(events.CloseHandlerClosed, abortive(s.c.c))
		}
	}
}

func (m *Manager) dropSide(s *sideConn) {
	m.mu.Lock()
	delete(m.sides, s)
	m.mu.Unlock()
}

// end closes the side connection; the connections handed over on it are
// closed with the reason handler_gone.
func (s *sideConn) end() {
	s.mu.Lock()
	s.gone = true
	list := make([]*Session, 0, len(s.sessions))
	for _, x := range s.sessions {
		list = append(list, x)
	}
	s.mu.Unlock()
	_ = s.c.Close()
	for _, x := range list {
		x.c.close(events.CloseHandlerGone, true) // its peer gets an RST
	}
	s.a.clearSide(s)
}

// setSide gives a handover attachment its side connection; false when the
// attachment is gone.
func (a *Attachment) setSide(s *sideConn) bool {
	h := a.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.handlers[a.id] != a || a.side != nil {
		return false
	}
	a.side = s
	h.dispatchLocked()
	return true
}

func (a *Attachment) clearSide(s *sideConn) {
	h := a.hub
	h.mu.Lock()
	if a.side == s {
		a.side = nil
	}
	h.mu.Unlock()
}

// handover gives the connection's descriptor to the handler and waits
// until the handler is done with it (or its side connection ends, or the
// daemon closes it), then reads the bytes each way from TCP_INFO.
func (s *Session) handover(side *sideConn) error {
	c := s.c
	c.faultConn().socketOnly.Store(true) // the daemon never sees its bytes: of the faults, only a reset acts on it
	c.mu.Lock()
	c.handedOver = true // from now on a close shuts the socket down: the handler holds it too
	c.mu.Unlock()
	side.mu.Lock()
	if side.gone {
		side.mu.Unlock()
		c.close(events.CloseHandlerGone, true)
		return nil
	}
	side.sessions[c.n] = s
	err := sendConn(side.c, c)
	side.mu.Unlock()
	if err != nil {
		e := error(fmt.Errorf("handover: %w", err))
		s.failure.Store(&e)
		c.close(events.CloseHandlerGone, true)
	}
	<-c.killed()
	side.mu.Lock()
	delete(side.sessions, c.n)
	side.mu.Unlock()
	c.mu.Lock()
	in, out, ok := c.abortedIn, c.abortedOut, c.aborted
	c.mu.Unlock()
	if !ok {
		in, out, ok = tcpBytes(c.c)
	}
	if ok {
		c.in.Store(in)
		c.out.Store(out)
		c.l.bytesIn.Add(in)
		c.l.bytesOut.Add(out)
	}
	return nil
}

// endHandover, at shutdown once every listener has drained, stops taking
// side connections, ends those open and waits for their goroutines.
func (m *Manager) endHandover() {
	m.mu.Lock()
	ln := m.handoverLn
	sides := make([]*sideConn, 0, len(m.sides))
	for s := range m.sides {
		sides = append(sides, s)
	}
	m.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
	for _, s := range sides {
		_ = s.c.Close()
	}
	m.sideWG.Wait()
}
