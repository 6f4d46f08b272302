package server

import (
	"net"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/listenerd/listenerd/internal/testkit"
)

// Only a listening unix stream socket passed in is taken for the API.
func TestActivationSocketKinds(t *testing.T) {
	dir := testkit.ShortDir(t)
	fdOf := func(c syscall.Conn) int {
		rc, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var fd int
		_ = rc.Control(func(f uintptr) { fd = int(f) })
		return fd
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "s"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	ug, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "g"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ug.Close()
	tl, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	for _, c := range []struct {
		name string
		fd   int
		want bool
	}{{"unix stream", fdOf(ul), true}, {"unixgram", fdOf(ug), false}, {"tcp", fdOf(tl), false}} {
		if got := isUnixStreamListener(c.fd); got != c.want {
			t.Errorf("%s: isUnixStreamListener = %v, want %v", c.name, got, c.want)
		}
	}
}
