package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/listenerd/listenerd/internal/testkit"
)

// floorRig is the floor in this process: relayecho on a unix socket,
// counting its streams, and a relay on 127.0.0.1 handing each socket to
// handle.
type floorRig struct {
	addr          string
	opened, ended atomic.Int64 // relayecho's streams
}

func startFloorRig(t *testing.T, handle func(*grpc.ClientConn, *net.TCPConn)) *floorRig {
	t.Helper()
	r := new(floorRig)
	sock := filepath.Join(testkit.ShortDir(t), "floor.sock")
	uln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		r.opened.Add(1)
		defer r.ended.Add(1)
		return h(srv, ss)
	}))
	registerRelayEcho(srv)
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(uln) }()
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	var handlers sync.WaitGroup
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		acceptLoop(ln.AcceptTCP, func(c *net.TCPConn) {
			handlers.Add(1)
			defer handlers.Done()
			handle(cc, c)
		})
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-accepted
		handlers.Wait()
		_ = cc.Close()
		srv.Stop()
		<-served
	})
	return r
}

// floorEcho sends msg on a new socket to the relay, ends its side, and returns
// what came back until the relay's end.
func floorEcho(t *testing.T, addr, msg string) string {
	t.Helper()
	c := testkit.Dial(t, addr)
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(got)
}

// TestFloorRelay: without reuse every socket has its own stream, which
// ends (trailers) with the socket.
func TestFloorRelay(t *testing.T) {
	r := startFloorRig(t, relay)
	for i := range 4 {
		msg := fmt.Sprintf("socket %d", i)
		if got := floorEcho(t, r.addr, msg); got != msg {
			t.Fatalf("socket %d: echoed %q, want %q", i, got, msg)
		}
	}
	testkit.Eventually(t, func() bool { return r.ended.Load() == 4 }, "relayecho's 4 streams to end")
	if n := r.opened.Load(); n != 4 {
		t.Errorf("relayecho served %d streams for 4 sockets, want 4", n)
	}
}

// TestFloorReuse: with reuse, sockets one after another share one stream,
// each getting back exactly its own bytes, and sockets open at once get a
// stream each.
func TestFloorReuse(t *testing.T) {
	p := new(streamPool)
	r := startFloorRig(t, p.relay)
	for i := range 4 {
		msg := fmt.Sprintf("socket %d", i)
		if got := floorEcho(t, r.addr, msg); got != msg {
			t.Fatalf("socket %d: echoed %q, want %q", i, got, msg)
		}
		testkit.Eventually(t, func() bool { return p.idleCount() == 1 }, "the stream back idle")
	}
	if n := r.opened.Load(); n != 1 {
		t.Fatalf("relayecho served %d streams for 4 sockets one after another, want 1", n)
	}

	// Two at once: the idle stream and a new one, one socket each.
	a, b := testkit.Dial(t, r.addr), testkit.Dial(t, r.addr)
	for _, c := range []*net.TCPConn{a, b} {
		msg := []byte("open " + c.LocalAddr().String())
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("echoed %q, want %q", got, msg)
		}
	}
	for _, c := range []*net.TCPConn{a, b} {
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if rest, err := io.ReadAll(c); err != nil || len(rest) > 0 {
			t.Fatalf("after end: %q, %v; want nothing", rest, err)
		}
	}
	testkit.Eventually(t, func() bool { return p.idleCount() == 2 }, "both streams back idle")
	if n := r.opened.Load(); n != 2 {
		t.Errorf("relayecho served %d streams for two sockets at once after the first, want 2", n)
	}
	if n := r.ended.Load(); n != 0 {
		t.Errorf("%d streams ended while idle, want 0", n)
	}
}
