package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/fleet/natstest"
	"github.com/listenerd/listenerd/internal/state"
	"github.com/listenerd/listenerd/internal/testkit"
)

// guard bounds every wait; it is a safety net, never a timing assertion.
const guard = 30 * time.Second

func TestMain(m *testing.M) {
	if path := os.Getenv(childConnectEnv); path != "" {
		childConnect(path) // re-executed as another user; never returns
	}
	goleak.VerifyTestMain(m, natstest.Leaks...)
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
	http   string // HTTP API's base URL (http://ADDR), "" without one
	token  string // the bearer token the HTTP helpers send, "" for none
	state  string // the state file
	log    *testkit.Buffer
	unix   listenerdv1.ListenerServiceClient
}

// startRun runs Run with cfg (socket unless set, state dir, log and stdout
// filled in)
// until the test ends, and waits for its "serving on" lines. Run must end
// without error.
func startRun(t testing.TB, cfg Config) *testDaemon {
	t.Helper()
	return startRunAt(t, cfg, slog.LevelDebug)
}

// startRunAt is startRun with the daemon's log at level.
func startRunAt(t testing.TB, cfg Config, level slog.Level) *testDaemon {
	t.Helper()
	dir := testkit.ShortDir(t)
	if cfg.Socket == "" {
		cfg.Socket = filepath.Join(dir, "run", "listenerd.sock")
	}
	d := &testDaemon{socket: cfg.Socket, log: &testkit.Buffer{}}
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(dir, "state")
	}
	d.state = filepath.Join(cfg.StateDir, state.FileName)
	cfg.Log = slog.New(slog.NewTextHandler(d.log, &slog.HandlerOptions{Level: level}))
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
		want++
	}
	if cfg.HTTP != "" {
		want++
	}
	for range want {
		select {
		case l := <-out.lines:
			if a, ok := strings.CutPrefix(l, "listenerd serving on tcp://"); ok {
				d.addr = a
			}
			if u, ok := strings.CutPrefix(l, "listenerd serving HTTP on "); ok {
				d.http = strings.TrimSuffix(u, "/")
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
	if cfg.HTTP != "" && d.http == "" {
		t.Fatal("no HTTP line")
	}
	d.unix = listenerdv1.NewListenerServiceClient(testkit.DialGRPCUnix(t, d.socket))
	return d
}

// dial connects to the daemon's TCP API; the connection is closed at the
// end of the test.
func (d *testDaemon) dial(t *testing.T, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	return testkit.DialGRPC(t, "passthrough:///"+d.addr, creds)
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
	ca, rogueCA := testkit.NewCA(t, "listenerd test CA"), testkit.NewCA(t, "rogue CA")
	p.pool, p.otherPool = ca.Pool(), rogueCA.Pool()
	p.caFile = ca.WriteCert(t, filepath.Join(p.dir, "ca.pem"))

	p.serverCert, p.srvKey = ca.Issue(t, "listenerd", x509.ExtKeyUsageServerAuth).Write(t, p.dir, "server")

	cli := ca.Issue(t, "ctl", x509.ExtKeyUsageClientAuth)
	p.clientCert, p.cliKey = cli.Write(t, p.dir, "client")
	p.client = cli.TLS()

	rogue := rogueCA.Issue(t, "mallory", x509.ExtKeyUsageClientAuth)
	p.rogueCert, p.rogueKey = rogue.Write(t, p.dir, "rogue")
	p.rogue = rogue.TLS()

	p.token = "s3cr3t-" + rand.Text()
	p.wrongToken = "s3cr3t-" + rand.Text()
	p.tokenFile = filepath.Join(p.dir, "token")
	if err := os.WriteFile(p.tokenFile, []byte("\n  "+p.token+"  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
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
