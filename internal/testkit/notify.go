//go:build unix

package testkit

import (
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// NotifyMsg is one datagram to a played $NOTIFY_SOCKET and the
// descriptors it carried, this process's now.
type NotifyMsg struct {
	State string
	Files []*os.File
}

// PlayNotify plays systemd's end of $NOTIFY_SOCKET: the datagrams sent to
// the returned path come out of the channel. What is never read is closed
// at the end of the test.
func PlayNotify(t testing.TB) (string, <-chan NotifyMsg) {
	t.Helper()
	path := filepath.Join(ShortDir(t), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan NotifyMsg, 256)
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
			m := NotifyMsg{State: string(buf[:n])}
			if cms, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, cm := range cms {
					fds, _ := syscall.ParseUnixRights(&cm)
					for _, fd := range fds {
						m.Files = append(m.Files, os.NewFile(uintptr(fd), "stored"))
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
			for _, f := range m.Files {
				f.Close()
			}
		}
	})
	return path, ch
}
