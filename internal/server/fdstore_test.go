package server

import (
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// playNotify plays systemd's side of $NOTIFY_SOCKET for the test
// (testkit.PlayNotify), and sets $NOTIFY_SOCKET to it.
func playNotify(t *testing.T) <-chan testkit.NotifyMsg {
	t.Helper()
	path, ch := testkit.PlayNotify(t)
	t.Setenv("NOTIFY_SOCKET", path)
	return ch
}

// nextNotify returns the next datagram.
func nextNotify(t *testing.T, ch <-chan testkit.NotifyMsg) testkit.NotifyMsg {
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
	return testkit.NotifyMsg{}
}

// Each listener's socket goes to systemd's descriptor store (FDSTORE=1,
// FDNAME=listener-<id>) once bound, after a removal of the name; a close
// removes it (FDSTOREREMOVE=1).
func TestFDStoreNotify(t *testing.T) {
	ch := playNotify(t)
	d := startRun(t, Config{Ephemeral: true})
	if m := nextNotify(t, ch); !strings.HasPrefix(m.State, "READY=1\n") || len(m.Files) != 0 {
		t.Fatalf("first datagram %+v, want READY=1", m)
	}
	ctx := testContext(t)
	r, err := d.unix.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: "kept", Spec: &listenerdv1.ListenerSpec{}})
	if err != nil {
		t.Fatal(err)
	}
	id, addr := r.GetListener().GetId(), r.GetListener().GetStatus().GetBoundAddress()
	name := "FDNAME=listener-" + id
	if m := nextNotify(t, ch); m.State != "FDSTOREREMOVE=1\n"+name || len(m.Files) != 0 {
		t.Fatalf("datagram %q with %d fds, want FDSTOREREMOVE of %s", m.State, len(m.Files), name)
	}
	m := nextNotify(t, ch)
	if m.State != "FDSTORE=1\n"+name || len(m.Files) != 1 {
		t.Fatalf("datagram %q with %d fds, want FDSTORE of %s with one", m.State, len(m.Files), name)
	}
	defer m.Files[0].Close()
	fd := int(m.Files[0].Fd())
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
	if m := nextNotify(t, ch); m.State != "FDSTOREREMOVE=1\n"+name || len(m.Files) != 0 {
		t.Fatalf("after close: datagram %q with %d fds, want FDSTOREREMOVE of %s", m.State, len(m.Files), name)
	}
}
