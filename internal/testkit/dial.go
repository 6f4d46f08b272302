package testkit

import (
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Dial connects to the TCP address addr, failing the test if it cannot.
// The connection is closed at the end of the test, and its reads and
// writes give up after Guard, so that a test never hangs on it.
func Dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	return keep(t, c)
}

// DialFrom is Dial from the local (loopback) source address src, such as
// 127.0.0.2.
func DialFrom(t testing.TB, src, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	return keep(t, c)
}

func keep(t testing.TB, c net.Conn) *net.TCPConn {
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(Guard))
	return c.(*net.TCPConn)
}

// DialGRPC makes a gRPC client connection to target (such as
// "passthrough:///127.0.0.1:7000") with creds. It connects lazily, on its
// first call, and is closed at the end of the test.
func DialGRPC(t testing.TB, target string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// DialGRPCUnix is DialGRPC to the unix socket at path, in plaintext.
func DialGRPCUnix(t testing.TB, path string) *grpc.ClientConn {
	t.Helper()
	return DialGRPC(t, "unix://"+path, insecure.NewCredentials())
}
