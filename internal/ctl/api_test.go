package ctl

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// tcpFake serves a fake daemon on 127.0.0.1:0, with TLS when certFile is
// set, answering ListListeners only to the bearer token want, and records
// the authorization headers it saw.
type tcpFake struct {
	addr string
	mu   sync.Mutex
	seen []string
}

func (f *tcpFake) headers() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.seen...)
}

func startTCPFake(t *testing.T, want string, creds credentials.TransportCredentials) *tcpFake {
	t.Helper()
	f := &tcpFake{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = lis.Addr().String()
	check := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		got := strings.Join(md.Get("authorization"), ",")
		f.mu.Lock()
		f.seen = append(f.seen, got)
		f.mu.Unlock()
		if got != "Bearer "+want {
			return nil, status.Error(codes.Unauthenticated, "invalid bearer token")
		}
		return h(ctx, req)
	}
	opts := []grpc.ServerOption{grpc.UnaryInterceptor(check)}
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	srv := grpc.NewServer(opts...)
	listenerdv1.RegisterListenerServiceServer(srv, &fakeService{
		list: func(context.Context, *listenerdv1.ListListenersRequest) (*listenerdv1.ListListenersResponse, error) {
			return &listenerdv1.ListListenersResponse{}, nil
		},
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return f
}

func writeToken(t *testing.T, dir, name, tok string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestAPIWithTLSAndToken(t *testing.T) {
	dir := t.TempDir()
	// The server's certificate is for 127.0.0.1, signed by a CA that ctl
	// trusts only with --ca.
	ca := testkit.NewCA(t, "listenerd test CA")
	cert := ca.WriteCert(t, filepath.Join(dir, "ca.pem"))
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "listenerd", x509.ExtKeyUsageServerAuth).TLS()}})
	const tok = "the-right-token-0123456789"
	f := startTCPFake(t, tok, creds)
	good, bad := writeToken(t, dir, "good", tok), writeToken(t, dir, "bad", "a-wrong-token-0123456789")

	r := runCtl(t, "/nonexistent.sock", "--api", f.addr, "--ca", cert, "--token-file", good, "ls")
	if r.code != ExitOK {
		t.Fatalf("ls over TLS with the token: exit %d, %s", r.code, r.stderr)
	}
	r = runCtl(t, "/nonexistent.sock", "--api", f.addr, "--ca", cert, "--token-file", bad, "ls")
	if r.code != ExitError || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, "not authorized") {
		t.Fatalf("wrong token: exit %d, stderr %q", r.code, r.stderr)
	}
	if strings.Contains(r.stderr, "a-wrong-token") {
		t.Fatalf("the token was printed: %q", r.stderr)
	}
	// Without --ca, a loopback --api is plaintext: the TLS server refuses it.
	r = runCtl(t, "/nonexistent.sock", "--api", f.addr, "--token-file", good, "--timeout", "2s", "ls")
	if r.code != ExitUnavailable || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, f.addr) ||
		!strings.Contains(r.stderr, "it may serve TLS there: give --ca") {
		t.Fatalf("plaintext against TLS: exit %d, stderr %q", r.code, r.stderr)
	}
	// --tls without --ca verifies with the system roots, which do not hold
	// this certificate.
	r = runCtl(t, "/nonexistent.sock", "--api", f.addr, "--tls", "--token-file", good, "--timeout", "2s", "ls")
	if r.code != ExitUnavailable || !strings.Contains(r.stderr, "its certificate is not trusted: give --ca") ||
		strings.Contains(r.stderr, "is the daemon running") {
		t.Fatalf("untrusted certificate: exit %d, stderr %q", r.code, r.stderr)
	}
	if h := f.headers(); len(h) != 2 || h[0] != "Bearer "+tok {
		t.Fatalf("authorization headers seen: %q", h)
	}
}

func TestAPIPlaintextLoopbackAndEnv(t *testing.T) {
	dir := t.TempDir()
	const tok = "plain-token-0123456789"
	f := startTCPFake(t, tok, nil)
	t.Setenv(APIEnv, f.addr)
	t.Setenv(TokenFileEnv, writeToken(t, dir, "tok", "  "+tok+"  "))
	// newApp reads LISTENERD_API as the default of --api.
	r := runCtl(t, "/nonexistent.sock", "ls")
	if r.code != ExitOK {
		t.Fatalf("ls over loopback plaintext from the environment: exit %d, %s", r.code, r.stderr)
	}
	if h := f.headers(); len(h) != 1 || h[0] != "Bearer "+tok {
		t.Fatalf("authorization headers seen: %q", h)
	}
	// TLS against the plaintext API says so, not "is the daemon running?".
	r = runCtl(t, "/nonexistent.sock", "--api", f.addr, "--tls", "--timeout", "2s", "ls")
	if r.code != ExitUnavailable || !strings.Contains(r.stderr, "it serves plaintext there: drop --tls") {
		t.Fatalf("TLS against plaintext: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestAPIFlagErrors(t *testing.T) {
	dir := t.TempDir()
	tf := writeToken(t, dir, "tok", "x")
	empty := writeToken(t, dir, "empty", "   ")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--token-file", tf, "ls"}, "need --api"},
		{[]string{"--ca", tf, "ls"}, "need --api"},
		{[]string{"--api", "127.0.0.1", "ls"}, "want host:port"},
		{[]string{"--api", "127.0.0.1:1", "--cert", tf, "ls"}, "go together"},
		{[]string{"--api", "127.0.0.1:1", "--ca", tf, "ls"}, "no PEM certificate"},
		{[]string{"--api", "127.0.0.1:1", "--ca", filepath.Join(dir, "nope"), "ls"}, "--ca"},
		{[]string{"--api", "127.0.0.1:1", "--token-file", empty, "ls"}, "one line"},
		{[]string{"--api", "127.0.0.1:1", "--token-file", filepath.Join(dir, "nope"), "ls"}, "--token-file"},
	} {
		r := runCtl(t, "/nonexistent.sock", tc.args...)
		if r.code != ExitUsage || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("ctl %v: exit %d, stderr %q, want usage error with %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
}

// An empty --socket is a mistake, not the default socket.
func TestEmptySocket(t *testing.T) {
	r := runCtl(t, "", "ls")
	if r.code != ExitUsage || !strings.HasPrefix(r.stderr, "ctl: --socket must not be empty") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}
