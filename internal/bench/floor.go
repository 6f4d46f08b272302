package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/listenerd/listenerd/api/listenerd"
	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// With --floor, listenerd's column of cases h and i is the floor of the
// stream handler's design instead: the least a socket's bytes can cost on
// one grpc-go stream a socket. Two processes of this binary stand in for
// the daemon and the handler and do nothing else:
//
//	relay      a TCP listener; each socket gets a stream to relayecho over
//	           one client connection on a unix socket: its bytes go out in
//	           data frames of at most listenerd.MaxFrame bytes, its FIN as
//	           end, and what comes back is written to it
//	relayecho  a grpc-go server on that unix socket sending each data
//	           frame back, and end after end
//
// No events, limits, interceptors, offers or takes: the messages are the
// stream handler's own (ServeConnectionRequest one way,
// ServeConnectionResponse the other), on a service of the bench's.
// --floor-reuse is the same floor with the streams reused (streamPool).

// floorMethod is the bench's relay stream.
const floorMethod = "/listenerd.bench.Relay/Pipe"

var floorDesc = grpc.StreamDesc{StreamName: "Pipe", ServerStreams: true, ClientStreams: true}

// registerRelayEcho registers the echo end of the floor (served by
// serveGRPC on the unix socket).
func registerRelayEcho(srv *grpc.Server) {
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: "listenerd.bench.Relay",
		HandlerType: (*any)(nil),
		Streams: []grpc.StreamDesc{{StreamName: "Pipe", ServerStreams: true, ClientStreams: true,
			Handler: func(_ any, ss grpc.ServerStream) error { return relayEcho(ss) }}},
	}, struct{}{})
}

// relayEcho sends every data frame back, and end after end.
func relayEcho(ss grpc.ServerStream) error {
	for {
		m := new(listenerdv1.ServeConnectionRequest)
		if err := ss.RecvMsg(m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		var out listenerdv1.ServeConnectionResponse
		switch k := m.GetKind().(type) {
		case *listenerdv1.ServeConnectionRequest_Data:
			out.Kind = &listenerdv1.ServeConnectionResponse_Data{Data: k.Data}
		case *listenerdv1.ServeConnectionRequest_End:
			out.Kind = &listenerdv1.ServeConnectionResponse_End{End: &listenerdv1.End{}}
		default:
			continue
		}
		if err := ss.SendMsg(&out); err != nil {
			return err
		}
	}
}

// serveRelay serves the socket end of the floor: a TCP listener whose
// sockets are relayed to relayecho at socket.
func serveRelay(socket string, reuse bool) int {
	cc, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		return 1
	}
	defer cc.Close()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		return 1
	}
	fmt.Println(ln.Addr())
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		_ = ln.Close()
	}()
	handle := relay
	if reuse {
		handle = new(streamPool).relay
	}
	acceptLoop(ln.AcceptTCP, func(c *net.TCPConn) { handle(cc, c) })
	return 0
}

var frames = sync.Pool{New: func() any { b := make([]byte, listenerd.MaxFrame); return &b }}

// relay carries c's bytes both ways on a stream of its own until both
// sides ended.
func relay(cc *grpc.ClientConn, c *net.TCPConn) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := cc.NewStream(ctx, &floorDesc, floorMethod)
	if err != nil {
		return
	}
	pipe(s, c, cancel, true)
}

// With --floor-reuse the relay keeps a stream whose socket is done and
// gives it to the next socket (streamPool): one socket at a time on a
// stream, and the stream handler's messages between them unchanged. The
// ends are the marker: relayecho sends end back only after the socket's
// end, and nothing after it, so once the relay has sent end and received
// end the stream is empty both ways.
type idleStream struct {
	s      grpc.ClientStream
	cancel context.CancelFunc
}

// streamPool is the relay's idle streams.
type streamPool struct {
	mu   sync.Mutex
	idle []idleStream
}

// relay is relay on an idle stream if there is one, else a new one, which
// goes back idle if c's socket ended cleanly on it.
func (p *streamPool) relay(cc *grpc.ClientConn, c *net.TCPConn) {
	p.mu.Lock()
	var st idleStream
	if n := len(p.idle); n > 0 {
		st, p.idle = p.idle[n-1], p.idle[:n-1]
	}
	p.mu.Unlock()
	if st.s == nil {
		ctx, cancel := context.WithCancel(context.Background())
		s, err := cc.NewStream(ctx, &floorDesc, floorMethod)
		if err != nil {
			cancel()
			return
		}
		st = idleStream{s, cancel}
	}
	if !pipe(st.s, c, st.cancel, false) {
		st.cancel()
		return
	}
	p.mu.Lock()
	p.idle = append(p.idle, st)
	p.mu.Unlock()
}

// idleCount is how many streams are idle.
func (p *streamPool) idleCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

// pipe carries c's bytes both ways on s until both sides ended, and
// reports whether they did cleanly: end sent, and end received. The last
// socket of s also closes its sending side and reads on to the trailers.
func pipe(s grpc.ClientStream, c *net.TCPConn, cancel context.CancelFunc, last bool) bool {
	back := make(chan bool)
	go func() { // what comes back, to the socket
		ended := false
		defer func() { back <- ended }()
		for {
			m := new(listenerdv1.ServeConnectionResponse)
			if s.RecvMsg(m) != nil {
				return
			}
			switch k := m.GetKind().(type) {
			case *listenerdv1.ServeConnectionResponse_Data:
				if _, err := c.Write(k.Data); err != nil {
					cancel()
					return
				}
			case *listenerdv1.ServeConnectionResponse_End:
				_ = c.CloseWrite()
				ended = true
				if !last {
					return
				}
			}
		}
	}()
	bp := frames.Get().(*[]byte)
	defer frames.Put(bp)
	sent := false
	for {
		n, err := c.Read(*bp)
		if n > 0 {
			if s.SendMsg(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_Data{Data: (*bp)[:n]}}) != nil {
				break
			}
		}
		if err != nil {
			sent = s.SendMsg(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_End{End: &listenerdv1.End{}}}) == nil
			if last {
				_ = s.CloseSend()
			}
			break
		}
	}
	return <-back && sent
}

// startFloor starts relayecho and relay: listenerd's column of h and i
// under --floor (relay in the daemon's place, relayecho in the handler's).
func (b *bench) startFloor(ctx context.Context) error {
	sock := filepath.Join(b.tmp, "floor.sock")
	echo, err := startGoServer(ctx, b.self, nil, b.log, "relayecho", "--socket", sock)
	if err != nil {
		return fmt.Errorf("relayecho: %w", err)
	}
	b.cleanups = append(b.cleanups, func() { _ = echo.closeStdin(30 * time.Second) })
	r, err := startGoServer(ctx, b.self, nil, b.log, "relay", "--socket", sock, "--reuse="+strconv.FormatBool(b.cfg.floorReuse))
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	b.cleanups = append(b.cleanups, func() { _ = r.closeStdin(30 * time.Second) })
	b.handler, b.floorEcho = r, echo
	return nil
}
