package listener

import "github.com/listenerd/listenerd/internal/events"

// Fail closes the connection whose socket failed a write of the
// handler's bytes (the peer reset it, or took nothing for the idle
// timeout). The socket will not say it again: a write that failed on a
// reset took the error, and the next read sees an end.
func (s *Session) Fail(err error) {
	select {
	case <-s.done:
		return // closed already
	default:
	}
	reason := socketReason(err)
	// Its reason, and the error, only if nothing closed it first (a kick,
	// a fault, its listener): a write to a socket closed by the daemon
	// fails too.
	if s.c.reason.CompareAndSwap(0, uint32(reason)) {
		if reason == events.CloseReset {
			s.failure.Store(&err) // before the close wakes the connection's goroutine
		}
		s.c.close(reason, false)
	}
	s.endOnce.Do(func() { close(s.handlerEnd) })
}
