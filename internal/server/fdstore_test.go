package server

import (
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// notifyMsg is one datagram to the notify socket, with the descriptors it
// carried (SCM_RIGHTS), this process's now.
type notifyMsg struct {
	state string
	fds   []int
}

// playNotify plays systemd's side of $NOTIFY_SOCKET: a unixgram socket
// whose datagrams come out of the channel. $NOTIFY_SOCKET is set for the
// test; descriptors never read are closed at the end.
func playNotify(t *testing.T) <-chan notifyMsg {
	t.Helper()
	path := filepath.Join(testkit.ShortDir(t), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", path)
	ch := make(chan notifyMsg, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		buf, oob := make([]byte, 4096), make([]byte, 1024)
		for {
			n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			m := notifyMsg{state: string(buf[:n])}
			if cms, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, cm := range cms {
					if fds, err := syscall.ParseUnixRights(&cm); err == nil {
						m.fds = append(m.fds, fds...)
					}
				}
			}
			ch <- m
		}
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
		for m := range ch {
			for _, fd := range m.fds {
				syscall.Close(fd)
			}
		}
	})
	return ch
}

// nextNotify returns the next datagram.
func nextNotify(t *testing.T, ch <-chan notifyMsg) notifyMsg {
	t.Helper()
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatal("notify socket closed")
		}
		return m
	case <-time.After(guard):
		t.Fatal("no datagram on the notify socket")
	}
	return notifyMsg{}
}

// Each listener's socket goes to systemd's descriptor store (FDSTORE=1,
// FDNAME=listener-<id>) once bound, after a removal of the name; a close
// removes it (FDSTOREREMOVE=1).
func TestFDStoreNotify(t *testing.T) {
	ch := playNotify(t)
	d := startRun(t, Config{Ephemeral: true})
	if m := nextNotify(t, ch); !strings.HasPrefix(m.state, "READY=1\n") || len(m.fds) != 0 {
		t.Fatalf("first datagram %+v, want READY=1", m)
	}
	ctx := testContext(t)
	r, err := d.unix.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: "kept", Spec: &listenerdv1.ListenerSpec{}})
	if err != nil {
		t.Fatal(err)
	}
	id, addr := r.GetListener().GetId(), r.GetListener().GetStatus().GetBoundAddress()
	name := "FDNAME=listener-" + id
	if m := nextNotify(t, ch); m.state != "FDSTOREREMOVE=1\n"+name || len(m.fds) != 0 {
		t.Fatalf("datagram %q with %d fds, want FDSTOREREMOVE of %s", m.state, len(m.fds), name)
	}
	m := nextNotify(t, ch)
	if m.state != "FDSTORE=1\n"+name || len(m.fds) != 1 {
		t.Fatalf("datagram %q with %d fds, want FDSTORE of %s with one", m.state, len(m.fds), name)
	}
	fd := m.fds[0]
	defer syscall.Close(fd)
	if acc, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN); err != nil || acc == 0 {
		t.Fatalf("stored descriptor is not a listening socket: %v %d", err, acc)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(addr)
	if in, ok := sa.(*syscall.SockaddrInet4); !ok || strconv.Itoa(in.Port) != port {
		t.Fatalf("stored socket is on %#v, the listener on %s", sa, addr)
	}
	if _, err := d.unix.CloseListener(ctx, &listenerdv1.CloseListenerRequest{Id: id, Force: true}); err != nil {
		t.Fatal(err)
	}
	if m := nextNotify(t, ch); m.state != "FDSTOREREMOVE=1\n"+name || len(m.fds) != 0 {
		t.Fatalf("after close: datagram %q with %d fds, want FDSTOREREMOVE of %s", m.state, len(m.fds), name)
	}
}
