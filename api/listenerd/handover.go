package listenerd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// TCPConn is a socket the daemon handed over: the real *net.TCPConn
// (embedded: every method of it, ReadFrom and WriteTo's splice included,
// works on the real socket at the kernel's speed), plus a Close that tells
// the daemon it is done, so that the daemon stops counting it and reports
// it closed with the bytes each way.
type TCPConn struct {
	*net.TCPConn
	id   string
	l    *Listener
	once sync.Once
}

// ID is the connection's id on the daemon.
func (c *TCPConn) ID() string { return c.id }

// Close closes the socket and tells the daemon.
func (c *TCPConn) Close() error {
	err := c.TCPConn.Close()
	c.once.Do(func() { c.l.handedClosed(c.id) })
	return err
}

// dialSide opens the side connection handed-over sockets come on.
func dialSide(path, secret string) (*net.UnixConn, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(rpcTimeout))
	if _, err := c.Write([]byte(secret)); err != nil {
		c.Close()
		return nil, err
	}
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "ok" {
		c.Close()
		if err == nil {
			err = errors.New("refused")
		}
		return nil, fmt.Errorf("the daemon refused the side connection: %w", err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// readHanded receives the handed-over sockets until the side connection
// ends, and hands each to Accept.
func (l *Listener) readHanded() {
	buf := make([]byte, 512)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for {
		n, oobn, _, _, err := l.side.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		c, err := l.received(string(buf[:n]), oob[:oobn])
		if err != nil {
			continue
		}
		select {
		case l.handed <- c:
		case <-l.ctx.Done():
			c.Close() // not accepted: back to the daemon, closed
		}
	}
}

// received makes the TCPConn of one side message: "<id> <remote> <local>"
// with the descriptor.
func (l *Listener) received(msg string, oob []byte) (*TCPConn, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("handover: no descriptor")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("handover: want one descriptor")
	}
	id, _, _ := strings.Cut(msg, " ")
	l.sideMu.Lock()
	l.sideConns++ // from here on, handedClosed says when it is done
	l.sideMu.Unlock()
	f := os.NewFile(uintptr(fds[0]), "listenerd-handover")
	nc, err := net.FileConn(f) // a copy of the descriptor, in the runtime's poller
	f.Close()
	if err != nil {
		l.handedClosed(id)
		return nil, err
	}
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		nc.Close()
		l.handedClosed(id)
		return nil, fmt.Errorf("handover: not a TCP socket")
	}
	return &TCPConn{TCPConn: tc, id: id, l: l}, nil
}

// handedClosed tells the daemon a handed-over socket is closed; once the
// listener is closed and the last one is, the side connection goes too.
func (l *Listener) handedClosed(id string) {
	l.sideMu.Lock()
	defer l.sideMu.Unlock()
	_, _ = l.side.Write([]byte("closed " + id))
	l.sideConns--
	if l.sideClosed && l.sideConns <= 0 {
		l.side.Close()
	}
}
