package testkit_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/listenerd/listenerd/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Lines from writers running side by side all arrive, whole.
func TestBufferConcurrentWriters(t *testing.T) {
	const writers, each = 8, 200
	var b testkit.Buffer
	var want []string
	var wg sync.WaitGroup
	for w := range writers {
		for i := range each {
			want = append(want, fmt.Sprintf("writer %d line %d", w, i))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if _, err := fmt.Fprintf(&b, "writer %d line %d\n", w, i); err != nil {
					t.Error(err)
				}
				_ = b.String() // readers run alongside
			}
		}()
	}
	wg.Wait()
	if n := b.Writes(); n != writers*each {
		t.Errorf("%d writes counted, want %d", n, writers*each)
	}
	got := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("%d lines, not the %d written whole", len(got), len(want))
	}
}

// OnOutput fires once, when the content first holds the string, even when
// it arrives in pieces, and the function it calls may read the buffer.
func TestBufferOnOutput(t *testing.T) {
	var b testkit.Buffer
	var fired []string
	b.OnOutput("ready", func() { fired = append(fired, b.String()) })
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, s := range []string{"starting\nrea", "dy\n", "ready again\n"} {
			if len(fired) != 0 && s == "dy\n" {
				t.Error("fired before the string was complete")
			}
			_, _ = b.Write([]byte(s))
		}
	}()
	select {
	case <-done:
	case <-time.After(testkit.Guard):
		t.Fatal("Write deadlocked calling the OnOutput function")
	}
	if len(fired) != 1 || fired[0] != "starting\nready\n" {
		t.Fatalf("fired %q, want once with the content that completed the string", fired)
	}
	// Content that already holds the string fires at once.
	n := 0
	b.OnOutput("again", func() { n++ })
	if n != 1 {
		t.Fatalf("OnOutput on content already holding the string fired %d times", n)
	}
}

// Eventually returns as soon as the condition holds, without calling it
// again.
func TestEventuallySucceeds(t *testing.T) {
	calls := 0
	testkit.Eventually(t, func() bool { calls++; return calls == 3 }, "the third call")
	if calls != 3 {
		t.Fatalf("condition called %d times, want 3", calls)
	}
}

// fatalRecorder stands in for a test that Eventually fails.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Helper() {}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// A condition that never holds fails the test, naming what was awaited,
// once the guard has passed.
func TestEventuallyFailsNamingWhat(t *testing.T) {
	r := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		testkit.EventuallyWithin(r, 20*time.Millisecond, func() bool { return false }, "the moon to turn blue")
		t.Error("EventuallyWithin returned although the condition never held")
	}()
	<-done
	if !strings.Contains(r.msg, "the moon to turn blue") {
		t.Fatalf("failure %q does not name what was awaited", r.msg)
	}
}

// A ShortDir holds a unix socket with the daemon's own layout, is readable
// by everyone, and is gone after the test.
func TestShortDir(t *testing.T) {
	var dir string
	t.Run("use", func(t *testing.T) {
		dir = testkit.ShortDir(t)
		if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o755 {
			t.Fatalf("stat %s: %v, %v; want a 0755 directory", dir, fi, err)
		}
		if err := os.Mkdir(filepath.Join(dir, "run"), 0o700); err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("unix", filepath.Join(dir, "run", "listenerd.sock"))
		if err != nil {
			t.Fatalf("unix socket in %s: %v", dir, err)
		}
		ln.Close()
	})
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s after its test: %v, want it removed", dir, err)
	}
}

// Dial and DialFrom connect, from the source asked for.
func TestDial(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, tc := range []struct {
		src  string
		dial func() *net.TCPConn
	}{
		{"127.0.0.1", func() *net.TCPConn { return testkit.Dial(t, ln.Addr().String()) }},
		{"127.0.0.2", func() *net.TCPConn { return testkit.DialFrom(t, "127.0.0.2", ln.Addr().String()) }},
	} {
		c := tc.dial()
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if ip := s.RemoteAddr().(*net.TCPAddr).IP.String(); ip != tc.src {
			t.Errorf("connection from %s, want %s", ip, tc.src)
		}
		if _, err := c.Write([]byte("hi")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(s, make([]byte, 2)); err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
}

// DialGRPCUnix reaches a gRPC server on a unix socket.
func TestDialGRPCUnix(t *testing.T) {
	sock := filepath.Join(testkit.ShortDir(t), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	defer func() { srv.Stop(); <-done }()
	ctx, cancel := context.WithTimeout(context.Background(), testkit.Guard)
	defer cancel()
	resp, err := healthpb.NewHealthClient(testkit.DialGRPCUnix(t, sock)).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health over the unix socket: %v, %v", resp, err)
	}
}

// handshake runs a TLS handshake over loopback TCP and returns each side's
// error.
func handshake(t *testing.T, srv, cli *tls.Config) (srvErr, cliErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		errc <- tls.Server(c, srv).Handshake()
	}()
	c := testkit.Dial(t, ln.Addr().String())
	cliErr = tls.Client(c, cli).Handshake()
	c.Close()
	return <-errc, cliErr
}

// A CA's certificates carry mutual TLS for 127.0.0.1 and ::1; another CA's
// pool does not trust them; the files written load back.
func TestCA(t *testing.T) {
	ca, other := testkit.NewCA(t, "test CA"), testkit.NewCA(t, "other CA")
	srv := ca.Issue(t, "server", x509.ExtKeyUsageServerAuth)
	cli := ca.Issue(t, "client", x509.ExtKeyUsageClientAuth)
	srvCfg := &tls.Config{Certificates: []tls.Certificate{srv.TLS()}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: ca.Pool(), SessionTicketsDisabled: true}
	for _, name := range []string{"127.0.0.1", "::1"} {
		sErr, cErr := handshake(t, srvCfg, &tls.Config{RootCAs: ca.Pool(), ServerName: name, Certificates: []tls.Certificate{cli.TLS()}})
		if sErr != nil || cErr != nil {
			t.Errorf("mutual TLS for %s: server %v, client %v", name, sErr, cErr)
		}
	}
	if _, cErr := handshake(t, srvCfg, &tls.Config{RootCAs: other.Pool(), ServerName: "127.0.0.1"}); cErr == nil {
		t.Error("another CA's pool trusts the server")
	}

	dir := t.TempDir()
	caFile := ca.WriteCert(t, filepath.Join(dir, "ca.pem"))
	certFile, keyFile := srv.Write(t, dir, "server")
	if certFile != filepath.Join(dir, "server.pem") || keyFile != filepath.Join(dir, "server-key.pem") {
		t.Errorf("wrote %s and %s", certFile, keyFile)
	}
	for _, f := range []string{caFile, certFile, keyFile} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, %v; want mode 0600", f, fi, err)
		}
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Errorf("load the written pair: %v", err)
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(pem) {
		t.Error("the written CA is not a PEM certificate")
	}
}
