package server

import (
	"net"
	"sync/atomic"

	"github.com/listenerd/listenerd/internal/service"
)

// maxSlowCuts is how many watch streams a client connection may have cut
// for falling behind before the daemon ends the connection (see
// service.SlowCutter).
const maxSlowCuts = 8

// clientListener wraps an API server's listener so that each client
// connection's address, which gRPC gives handlers as the peer's, leads back
// to the connection.
type clientListener struct{ net.Listener }

func (l clientListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	cc := &clientConn{Conn: c}
	addr := c.RemoteAddr()
	if addr == nil {
		addr = &net.UnixAddr{Net: "unix"}
	}
	cc.addr = clientAddr{Addr: addr, c: cc}
	return cc, nil
}

// clientConn is one client connection of an API server.
type clientConn struct {
	net.Conn
	addr clientAddr
	cuts atomic.Int32
}

func (c *clientConn) RemoteAddr() net.Addr { return c.addr }

// clientAddr is a client connection's address; it implements
// service.SlowCutter.
type clientAddr struct {
	net.Addr
	c *clientConn
}

// SlowCut counts a watch stream cut on the connection, and closes the
// connection past maxSlowCuts.
func (a clientAddr) SlowCut() (closed bool, cuts int) {
	n := int(a.c.cuts.Add(1))
	if n <= maxSlowCuts {
		return false, n
	}
	_ = a.c.Close()
	return true, n
}

var _ service.SlowCutter = clientAddr{}
