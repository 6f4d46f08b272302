package listener

import (
	"net"
	"net/netip"
	"os"
)

// takePassedLocked makes a listener of r on the listening socket f was
// passed in with (systemd's descriptor store, through $LISTEN_FDS), when
// it is a TCP listening socket on the address r would bind: ip and the
// spec's port, or, for port 0, the port last bound. Otherwise it returns
// nil and the caller binds. m.mu must be held; f is the caller's to close.
func (m *Manager) takePassedLocked(f *os.File, r record, spec Spec, h Handler, ip netip.Addr) *Listener {
	fl, err := net.FileListener(f)
	if err != nil {
		m.log.Warn("passed socket not taken", "listener", r.ID, "err", err)
		return nil
	}
	ln, ok := fl.(*net.TCPListener)
	if !ok {
		fl.Close()
		m.log.Warn("passed socket not taken: not a TCP listening socket", "listener", r.ID)
		return nil
	}
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	want := spec.Port
	if want == 0 {
		want = r.BoundPort
	}
	if ap.Addr().Unmap() != ip.Unmap() || ap.Port() != want || m.policy.Check(ip, spec.Port) != nil {
		ln.Close()
		m.log.Warn("passed socket not taken: not on the listener's address", "listener", r.ID, "addr", ap.String())
		return nil
	}
	if !m.takeFDs(listenerFDs) {
		ln.Close()
		return nil // bindLocked reports the limit
	}
	l := m.startLocked(r.ID, r.Name, spec, h, ln, r.Created)
	l.log.Info("listener restored on a passed socket")
	return l
}
