package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	_ "net/http/pprof" // served only with --pprof, for profiling the baseline and the stream handler next to the daemon
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// serveMain runs a bare Go server, the baseline: a goroutine per
// connection and nothing else. It prints its address, then serves until its
// stdin closes (the bench ended) or a signal ends it.
//
//	echo     io.Copy(c, c)                          cases a, b, d (and c's upstream)
//	echo4k   read into a 4 KiB buffer, write back   case e
//	forward  io.Copy both ways to --upstream        case c
//	grpc     grpc.health.v1 on the unix --socket    case f's floor of an RPC
//	stream   the Go stream handler: a listener on the daemon at --socket,
//	         each connection echoed with io.Copy(c, c)  cases h, i, j
//	         (not a bare server: listenerd's column of those cases)
//	relay, relayecho  with --floor, the floor of the stream handler's
//	         design in listenerd's column of h and i (floor.go)
func serveMain(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	mode := fs.String("mode", "echo", "echo, echo4k, forward, grpc, stream, relay or relayecho")
	upstream := fs.String("upstream", "", "forward: upstream host:port")
	socket := fs.String("socket", "", "grpc: the unix socket to serve on; stream: the daemon's socket")
	clients := fs.Int("clients", 1, "stream: client connections to the daemon, each attached to the listener")
	handover := fs.Bool("handover", false, "stream: take the sockets themselves (handover) instead of their bytes")
	per := fs.Int("per", 100, "stream: connections each client connection takes at once (the API serves at most 128 streams a connection)")
	reuse := fs.Bool("reuse", false, "relay: a socket takes an idle stream a socket finished with, if there is one (--floor-reuse)")
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof on this address and print it (every mode but grpc, relay and relayecho)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var handle func(*net.TCPConn)
	switch *mode {
	case "grpc":
		return serveGRPC(*socket, func(srv *grpc.Server) { healthpb.RegisterHealthServer(srv, health.NewServer()) })
	case "stream":
		return serveStream(*socket, *clients, *per, *handover, *pprofAddr)
	case "relay":
		return serveRelay(*socket, *reuse)
	case "relayecho":
		return serveGRPC(*socket, registerRelayEcho)
	case "echo":
		handle = func(c *net.TCPConn) { _, _ = io.Copy(c, c) }
	case "echo4k":
		handle = func(c *net.TCPConn) { echo4k(c) }
	case "forward":
		if *upstream == "" {
			fmt.Fprintln(os.Stderr, "serve: --mode forward needs --upstream")
			return 2
		}
		handle = func(c *net.TCPConn) { forward(c, *upstream) }
	default:
		fmt.Fprintf(os.Stderr, "serve: unknown mode %q\n", *mode)
		return 2
	}
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		return 1
	}
	fmt.Println(ln.Addr())
	if err := servePprof(*pprofAddr); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		return 1
	}
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	acceptLoop(ln.AcceptTCP, handle)
	return 0
}

// servePprof serves net/http/pprof on addr, if not empty, and prints
// "pprof ADDR" once it listens; a server prints it after its own address,
// the first line the bench reads.
func servePprof(addr string) error {
	if addr == "" {
		return nil
	}
	if r, err := strconv.Atoi(os.Getenv("LISTENERD_BENCH_MEMPROFILERATE")); err == nil {
		runtime.MemProfileRate = r
	}
	pl, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Println("pprof " + pl.Addr().String())
	go func() { _ = http.Serve(pl, nil) }()
	return nil
}

// acceptLoop accepts until the listener closes (or the process ends),
// serving each connection on a goroutine of its own and closing it after;
// accept errors back off like net/http does, so they never spin a core.
func acceptLoop[C io.Closer](accept func() (C, error), handle func(C)) {
	var backoff time.Duration
	for {
		c, err := accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		go func() {
			defer c.Close()
			handle(c)
		}()
	}
}

// echo4k is the goroutine-per-connection server with a 4 KiB read buffer
// that issue 7 sets as case e's baseline, written as usual against
// net.Conn, so the buffer lives on the heap (about 7.7 KB a connection, as
// the issue says). Written against *net.TCPConn the compiler would keep it
// on the stack, which then grows to 8 KiB: about 9.7 KB a connection.
func echo4k(c net.Conn) {
	buf := make([]byte, 4<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// forward is the bare Go io.Copy forwarder: half-closes pass through.
func forward(c *net.TCPConn, upstream string) {
	nc, err := net.DialTimeout("tcp", upstream, 10*time.Second)
	if err != nil {
		return
	}
	up := nc.(*net.TCPConn)
	defer up.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(c, up)
		_ = c.CloseWrite()
	}()
	_, _ = io.Copy(up, c)
	_ = up.CloseWrite()
	wg.Wait()
}

// serveGRPC is a bare grpc-go server with no options on a unix socket,
// serving what register registers: the health service alone for case f's
// floor of any RPC on this machine, or the floor's relay echo (floor.go).
// It prints the socket.
func serveGRPC(socket string, register func(*grpc.Server)) int {
	if socket == "" {
		fmt.Fprintln(os.Stderr, "serve: --mode grpc and relayecho need --socket")
		return 2
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		return 1
	}
	srv := grpc.NewServer()
	register(srv)
	fmt.Println(socket)
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		srv.Stop()
	}()
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		return 1
	}
	return 0
}
