package server

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/listenerd/listenerd/internal/service"
)

// A client connection's address leads back to it: past maxSlowCuts watch
// streams cut on it, SlowCut closes it, and its client reads EOF.
func TestSlowCutsCloseTheConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cl := clientListener{ln}
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := cl.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	cutter, ok := server.RemoteAddr().(service.SlowCutter)
	if !ok {
		t.Fatalf("the peer address %T is no SlowCutter", server.RemoteAddr())
	}
	if got, want := server.RemoteAddr().String(), client.LocalAddr().String(); got != want {
		t.Fatalf("peer address %s, want the client's %s", got, want)
	}
	for i := 1; i <= maxSlowCuts; i++ {
		if closed, cuts := cutter.SlowCut(); closed || cuts != i {
			t.Fatalf("cut %d: closed=%v cuts=%d; want open", i, closed, cuts)
		}
	}
	if closed, cuts := cutter.SlowCut(); !closed || cuts != maxSlowCuts+1 {
		t.Fatalf("cut %d: closed=%v cuts=%d; want closed", maxSlowCuts+1, closed, cuts)
	}
	_ = client.SetReadDeadline(time.Now().Add(30 * time.Second)) // a guard, not a timing assertion
	if _, err := client.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("client read after the close: %v, want EOF", err)
	}
}
