package server

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/state"
)

// guard bounds every wait; it is a safety net, never a timing assertion.
const guard = 30 * time.Second

func TestMain(m *testing.M) {
	if path := os.Getenv(childConnectEnv); path != "" {
		childConnect(path) // re-executed as another user; never returns
	}
	goleak.VerifyTestMain(m)
}

// syncBuffer is a bytes.Buffer safe for concurrent writers (the log).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lineWriter hands each complete line written to it to a channel: Run's
// "serving on" lines say where it serves.
type lineWriter struct {
	mu    sync.Mutex
	buf   []byte
	lines chan string
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		select {
		case w.lines <- string(w.buf[:i]):
		default: // nobody reads any more lines
		}
		w.buf = w.buf[i+1:]
	}
}

// testDaemon is one Run in this process.
type testDaemon struct {
	socket string
	addr   string // TCP API, "" without one
	state  string // the state file
	log    *syncBuffer
	unix   listenerdv1.ListenerServiceClient
}

// startRun runs Run with cfg (socket unless set, state dir, log and stdout
// filled in)
// until the test ends, and waits for its "serving on" lines. Run must end
// without error.
func startRun(t testing.TB, cfg Config) *testDaemon {
	t.Helper()
	dir := shortTempDir(t)
	if cfg.Socket == "" {
		cfg.Socket = filepath.Join(dir, "run", "listenerd.sock")
	}
	d := &testDaemon{socket: cfg.Socket, log: &syncBuffer{}}
	cfg.StateDir = filepath.Join(dir, "state")
	d.state = filepath.Join(cfg.StateDir, state.FileName)
	cfg.Log = slog.New(slog.NewTextHandler(d.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	out := &lineWriter{lines: make(chan string, 8)}
	cfg.Stdout = out
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(guard):
			t.Errorf("Run did not return after cancel")
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.log.String())
		}
	})
	want := 1
	if cfg.API.Listen != "" {
		want = 2
	}
	for range want {
		select {
		case l := <-out.lines:
			if a, ok := strings.CutPrefix(l, "listenerd serving on tcp://"); ok {
				d.addr = a
			}
		case err := <-done:
			t.Fatalf("Run ended before serving: %v\n%s", err, d.log.String())
		case <-time.After(guard):
			t.Fatal("Run never said it serves")
		}
	}
	if cfg.API.Listen != "" && d.addr == "" {
		t.Fatal("no tcp:// line")
	}
	conn, err := grpc.NewClient("unix://"+d.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	d.unix = listenerdv1.NewListenerServiceClient(conn)
	return d
}

// dial connects to the daemon's TCP API; the connection is closed at the
// end of the test.
func (d *testDaemon) dial(t *testing.T, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+d.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// shortTempDir is a temporary directory with a short path (unix socket
// paths are limited), readable by everyone so that only the daemon's own
// modes guard what it creates inside.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "lds")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	t.Cleanup(cancel)
	return ctx
}

// pki is a CA, a server certificate for 127.0.0.1 and ::1, and client
// certificates, all generated for the test and written as PEM files.
type pki struct {
	dir                 string
	caFile              string // the CA that signs the server and the good client
	serverCert, srvKey  string
	clientCert, cliKey  string // signed by the CA
	rogueCert, rogueKey string // a client certificate from another CA
	pool                *x509.CertPool
	client, rogue       tls.Certificate
	otherPool           *x509.CertPool // trusts only the rogue CA
	serverName          string
	tokenFile, token    string
	wrongToken          string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir(), serverName: "127.0.0.1"}
	ca, caKey := newCA(t, "listenerd test CA")
	rogueCA, rogueKey := newCA(t, "rogue CA")
	p.pool, p.otherPool = x509.NewCertPool(), x509.NewCertPool()
	p.pool.AddCert(ca)
	p.otherPool.AddCert(rogueCA)
	p.caFile = p.writePEM(t, "ca.pem", "CERTIFICATE", ca.Raw)

	srvDER, srvKey := newLeaf(t, ca, caKey, "listenerd", x509.ExtKeyUsageServerAuth)
	p.serverCert = p.writePEM(t, "server.pem", "CERTIFICATE", srvDER)
	p.srvKey = p.writeKey(t, "server-key.pem", srvKey)

	cliDER, cliKey := newLeaf(t, ca, caKey, "ctl", x509.ExtKeyUsageClientAuth)
	p.clientCert = p.writePEM(t, "client.pem", "CERTIFICATE", cliDER)
	p.cliKey = p.writeKey(t, "client-key.pem", cliKey)
	p.client = tls.Certificate{Certificate: [][]byte{cliDER}, PrivateKey: cliKey}

	rDER, rKey := newLeaf(t, rogueCA, rogueKey, "mallory", x509.ExtKeyUsageClientAuth)
	p.rogueCert = p.writePEM(t, "rogue.pem", "CERTIFICATE", rDER)
	p.rogueKey = p.writeKey(t, "rogue-key.pem", rKey)
	p.rogue = tls.Certificate{Certificate: [][]byte{rDER}, PrivateKey: rKey}

	p.token = "s3cr3t-" + rand.Text()
	p.wrongToken = "s3cr3t-" + rand.Text()
	p.tokenFile = filepath.Join(p.dir, "token")
	if err := os.WriteFile(p.tokenFile, []byte("\n  "+p.token+"  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *pki) writePEM(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (p *pki) writeKey(t *testing.T, name string, k *ecdsa.PrivateKey) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return p.writePEM(t, name, "PRIVATE KEY", der)
}

var serial atomic.Int64

func nextSerial() *big.Int { return big.NewInt(serial.Add(1)) }

func newCA(t *testing.T, cn string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

func newLeaf(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, use x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{use},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

// creds returns client transport credentials trusting roots and
// presenting cert when it is not nil.
func (p *pki) creds(roots *x509.CertPool, cert *tls.Certificate) credentials.TransportCredentials {
	tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if cert != nil {
		// Sent even when the server asks for another CA's certificates, as
		// a client trying its luck would.
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return credentials.NewTLS(tc)
}

// childConnectEnv names the socket a re-executed test binary tries to
// connect to, as another user.
const childConnectEnv = "LISTENERD_TEST_CONNECT_AS_CHILD"

// Exit codes of childConnect.
const (
	childConnected = 10
	childRefused   = 11 // EACCES or EPERM
	childOther     = 12
)

// childConnect dials the unix socket at path and exits with what happened.
func childConnect(path string) {
	c, err := net.Dial("unix", path)
	switch {
	case err == nil:
		c.Close()
		os.Exit(childConnected)
	case errors.Is(err, os.ErrPermission):
		os.Exit(childRefused)
	default:
		fmt.Fprintln(os.Stderr, err)
		os.Exit(childOther)
	}
}
