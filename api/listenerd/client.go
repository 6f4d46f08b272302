// Package listenerd is the Go client of listenerd, the daemon that hosts
// raw TCP listeners controlled over gRPC.
//
// Dial reaches the daemon the way ctl does: its unix socket by default
// ($LISTENERD_SOCKET, or the daemon's default path), or its TCP API with
// TLS and a bearer token. The Client has a typed method for every RPC (it
// embeds the generated client), a Watch that resumes by itself, and Listen
// and Attach, which return a net.Listener whose connections are the
// daemon's sockets, served from this process: http.Serve takes it as it
// is.
package listenerd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/gopool"
	"github.com/listenerd/listenerd/internal/paths"
)

// SocketEnv names the environment variable holding the daemon's socket
// path.
const SocketEnv = paths.SocketEnv

// Options say how to reach the daemon. The zero Options is its unix
// socket: $LISTENERD_SOCKET, or the daemon's default path.
type Options struct {
	// Socket is the daemon's unix socket; empty means the default.
	Socket string
	// Addr is host:port of the daemon's TCP API, used instead of the
	// socket when set.
	Addr string
	// TLS is the TLS configuration for Addr. Nil means TLS with the
	// system's roots, except on loopback, where nil means plaintext.
	TLS *tls.Config
	// Token is the TCP API's bearer token, sent only over TLS or loopback.
	Token string
	// DialOptions are added to the client's own.
	DialOptions []grpc.DialOption
	// NoHandover serves listeners' connections through the API even when
	// the daemon is local. By default, over the unix socket, Listen and
	// Attach take the sockets themselves (handover): Accept returns a
	// *TCPConn holding the real socket, and bytes move at kernel speed.
	NoHandover bool
}

// keepaliveParams ping the daemon every 30s while a stream is open, within
// the daemon's enforcement policy (never more often than every 20s).
var keepaliveParams = keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}

// Client is a connection to the daemon. Its embedded ListenerServiceClient
// has a typed method for every RPC.
type Client struct {
	listenerdv1.ListenerServiceClient
	conn     *grpc.ClientConn
	handover bool // the daemon is local: take sockets, not bytes
	// The goroutines that read the connections' streams (Conn.recv),
	// reused from one connection to the next: a new one grows its stack
	// in gRPC's calls each time (about a tenth of a handler's CPU with
	// short connections).
	recvers *gopool.Pool
	// The client connection's streams (maxStreams, the daemon's limit)
	// reserved by its listeners: fixed for their attach streams and
	// concurrencies, idleReady for their streams opened ahead that serve
	// nothing (Listener.reserveIdle).
	fixed     atomic.Int64
	idleReady atomic.Int64
}

// reserveIdle counts one more stream opened ahead and serving nothing, if
// the client connection has room for it beside its listeners' attach
// streams and concurrencies: a take then finds a stream.
func (c *Client) reserveIdle() bool {
	for {
		n := c.idleReady.Load()
		if n >= maxStreams-c.fixed.Load() {
			return false
		}
		if c.idleReady.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// Dial returns a client of the daemon; it connects lazily, on the first
// call.
func Dial(o Options) (*Client, error) {
	target, opts, err := o.endpoint()
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(target, append(opts, o.DialOptions...)...)
	if err != nil {
		return nil, err
	}
	return &Client{ListenerServiceClient: listenerdv1.NewListenerServiceClient(conn), conn: conn,
		handover: o.Addr == "" && !o.NoHandover, recvers: gopool.New(recverIdle)}, nil
}

// Conn is the client's gRPC connection.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection. Streams open on it (watches, listeners'
// connections) end.
func (c *Client) Close() error {
	c.recvers.Close()
	return c.conn.Close()
}

// recverIdle is how long a goroutine that read a connection's stream waits
// for the next connection before it ends.
const recverIdle = 5 * time.Second

// DefaultSocket is the socket Dial uses when Options names none.
func DefaultSocket() string { return paths.DefaultSocket() }

func (o Options) endpoint() (string, []grpc.DialOption, error) {
	opts := []grpc.DialOption{grpc.WithKeepaliveParams(keepaliveParams)}
	if o.Addr == "" {
		if o.Token != "" || o.TLS != nil {
			return "", nil, errors.New("listenerd: Token and TLS need Addr (the socket needs no credentials)")
		}
		sock := o.Socket
		if sock == "" {
			sock = DefaultSocket()
		}
		return unixTarget(sock), append(opts, grpc.WithTransportCredentials(insecure.NewCredentials())), nil
	}
	host, _, err := net.SplitHostPort(o.Addr)
	if err != nil {
		return "", nil, fmt.Errorf("listenerd: Addr %q: want host:port", o.Addr)
	}
	creds := insecure.NewCredentials()
	secure := o.TLS != nil || !loopbackHost(host)
	if secure {
		tc := o.TLS
		if tc == nil {
			tc = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		creds = credentials.NewTLS(tc)
	}
	opts = append(opts, grpc.WithTransportCredentials(creds))
	if o.Token != "" {
		if strings.ContainsAny(o.Token, "\r\n") {
			return "", nil, errors.New("listenerd: Token holds a line break")
		}
		opts = append(opts, grpc.WithPerRPCCredentials(bearer{token: o.Token, secure: secure}))
	}
	return "passthrough:///" + o.Addr, opts, nil
}

// unixTarget is the gRPC target of a unix socket path: unix:///abs for an
// absolute path, unix:rel for a relative one (unix://rel would read rel as
// an authority).
func unixTarget(socket string) string {
	if filepath.IsAbs(socket) {
		return "unix://" + socket
	}
	return "unix:" + socket
}

// loopbackHost says whether host is a loopback address or "localhost".
func loopbackHost(host string) bool {
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip.Unmap().IsLoopback()
	}
	return host == "localhost"
}

// bearer sends the token as "authorization: Bearer <token>" on every call.
type bearer struct {
	token  string
	secure bool // TLS: grpc refuses to send it over anything else
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.secure }
