package ctl

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/listenerd/listenerd/internal/testkit"
)

// startServer listens on 127.0.0.1:0 and runs handle for every connection,
// closing the connection after it; cleanup closes the listener and waits for
// every goroutine.
func startServer(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	testkit.Serve(t, ln, handle)
	return ln.Addr().String()
}

func echo(c net.Conn) { _, _ = io.Copy(c, c) }

func TestConnectSendOnce(t *testing.T) {
	addr := startServer(t, echo)
	var stdout, stderr testkit.Buffer
	err := connect(context.Background(), connectOptions{address: addr, send: "I am Chuck Norris!", sendSet: true, once: true}, nil, &stdout, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	// The first reply is at least the first byte of the echo.
	if out := stdout.String(); out == "" || !strings.HasPrefix("I am Chuck Norris!", out) {
		t.Errorf("stdout %q", out)
	}
	_, port, _ := net.SplitHostPort(addr)
	for _, want := range []string{
		"CONNECTED TO: " + addr + "\n",
		"remoteAddress=127.0.0.1 remotePort=" + port + " remoteFamily=IPv4 localAddress=127.0.0.1 localPort=",
		"connection closed\n",
	} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	if strings.Contains(stderr.String(), "resolved") {
		t.Errorf("an IP address is not looked up:\n%s", stderr.String())
	}
}

func TestConnectSendHalfCloses(t *testing.T) {
	// The echo server returns at EOF, so the reply is whole only if connect
	// half-closed after sending and kept reading.
	addr := startServer(t, echo)
	var stdout, stderr testkit.Buffer
	msg := strings.Repeat("0123456789", 10000)
	if err := connect(context.Background(), connectOptions{address: addr, send: msg, sendSet: true}, nil, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if stdout.String() != msg {
		t.Errorf("got %d bytes back, want %d", len(stdout.String()), len(msg))
	}
}

func TestConnectStdin(t *testing.T) {
	addr := startServer(t, echo)
	var stdout, stderr testkit.Buffer
	in := "line one\nline two\n"
	if err := connect(context.Background(), connectOptions{address: addr}, strings.NewReader(in), &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if stdout.String() != in {
		t.Errorf("stdout %q, want %q", stdout.String(), in)
	}
}

func TestConnectServerClosesFirst(t *testing.T) {
	addr := startServer(t, func(c net.Conn) { _, _ = io.WriteString(c, "bye\n") })
	pr, pw := io.Pipe() // stdin that stays open
	defer pw.Close()    // lets the stdin reader go
	var stdout, stderr testkit.Buffer
	if err := connect(context.Background(), connectOptions{address: addr}, pr, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if stdout.String() != "bye\n" {
		t.Errorf("stdout %q", stdout.String())
	}
}

func TestConnectCancel(t *testing.T) {
	release := make(chan struct{})
	addr := startServer(t, func(c net.Conn) { <-release })
	defer close(release)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr testkit.Buffer
	stderr.OnOutput("remoteAddress=", cancel)
	if err := connect(ctx, connectOptions{address: addr, send: "x", sendSet: true, once: true}, nil, &stdout, &stderr); err != nil {
		t.Fatalf("cancelled connect: %v", err)
	}
}

func TestConnectLocalhost(t *testing.T) {
	addr := startServer(t, echo)
	_, port, _ := net.SplitHostPort(addr)
	var stdout, stderr testkit.Buffer
	err := connect(context.Background(), connectOptions{address: "localhost:" + port, send: "hi", sendSet: true}, nil, &stdout, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), "resolved localhost to ") || !strings.Contains(stderr.String(), "127.0.0.1") {
		t.Errorf("stderr:\n%s", stderr.String())
	}
	if !strings.Contains(stderr.String(), "CONNECTED TO: localhost:"+port+"\n") {
		t.Errorf("stderr:\n%s", stderr.String())
	}
	if stdout.String() != "hi" {
		t.Errorf("stdout %q", stdout.String())
	}
}

func TestConnectRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var stdout, stderr testkit.Buffer
	err = connect(context.Background(), connectOptions{address: addr, send: "x", sendSet: true}, nil, &stdout, &stderr)
	if err == nil || err.Error() != "cannot connect to "+addr+": connection refused" {
		t.Errorf("err = %v", err)
	}
}

func TestConnectCommand(t *testing.T) {
	addr := startServer(t, echo)
	var stdout, stderr testkit.Buffer
	a := newApp(&stdout, &stderr)
	a.stdin = strings.NewReader("from stdin")
	if code := a.run(context.Background(), []string{"connect", addr}); code != ExitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if stdout.String() != "from stdin" {
		t.Errorf("stdout %q", stdout.String())
	}

	var stdout2, stderr2 testkit.Buffer
	a = newApp(&stdout2, &stderr2)
	if code := a.run(context.Background(), []string{"connect", addr, "--send", "flag"}); code != ExitOK {
		t.Fatalf("exit %d: %s", code, stderr2.String())
	}
	if stdout2.String() != "flag" {
		t.Errorf("stdout %q", stdout2.String())
	}
}
