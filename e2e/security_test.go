package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// tlsFiles writes a CA and a server certificate for 127.0.0.1 and ::1
// signed by it, and returns the paths of the CA, the certificate and its
// key, and a pool trusting the CA.
func tlsFiles(t *testing.T, dir string) (ca, cert, key string, pool *x509.CertPool) {
	t.Helper()
	authority := testkit.NewCA(t, "e2e CA")
	cert, key = authority.Issue(t, "listenerd", x509.ExtKeyUsageServerAuth).Write(t, dir, "server")
	return authority.WriteCert(t, filepath.Join(dir, "ca.pem")), cert, key, authority.Pool()
}

// startTCPDaemon runs the daemon with args (which include --api-listen
// with port 0) and returns it once it printed its TCP API address, which
// it does once both APIs serve.
func startTCPDaemon(t *testing.T, args ...string) (*daemon, string) {
	t.Helper()
	dir := testkit.ShortDir(t)
	d := &daemon{t: t, socket: filepath.Join(dir, "run", "listenerd.sock"), stderr: &testkit.Buffer{}, exited: make(chan struct{})}
	d.cmd = exec.Command(daemonBin, append([]string{"--socket", d.socket, "--state-dir", filepath.Join(dir, "state")}, args...)...)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	d.cmd.Stdout, d.cmd.Stderr = w, d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	addrc, readDone := make(chan string, 1), make(chan struct{})
	go func() {
		defer close(readDone)
		defer r.Close()
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			d.stderr.Write([]byte(sc.Text() + "\n"))
			if a, ok := strings.CutPrefix(sc.Text(), "listenerd serving on tcp://"); ok {
				addrc <- a
			}
		}
	}()
	go func() { d.err = d.cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() { <-readDone }) // runs last: the daemon has exited
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.stderr.String())
		}
	})
	var addr string
	select {
	case addr = <-addrc:
	case <-d.exited:
		t.Fatalf("daemon exited before serving: %v\n%s", d.err, d.stderr.String())
	case <-time.After(guard):
		t.Fatalf("daemon never printed its TCP API address\n%s", d.stderr.String())
	}
	return d, addr
}

func TestDaemonRefusesUnguardedTCPAPI(t *testing.T) {
	dir := testkit.ShortDir(t)
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("e2e-token-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, cert, key, _ := tlsFiles(t, dir)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"every interface without TLS", []string{"--api-listen", "0.0.0.0:0", "--token-file", token}, "without TLS"},
		{"empty host without TLS", []string{"--api-listen", ":0", "--token-file", token}, "without TLS"},
		{"TLS without authentication", []string{"--api-listen", "0.0.0.0:0", "--tls-cert", cert, "--tls-key", key}, "without authentication"},
		{"bad port policy", []string{"--allow-ports", "9-1"}, "--allow-ports"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run := testkit.ShortDir(t)
			sock := filepath.Join(run, "run", "listenerd.sock")
			ctx, cancel := context.WithTimeout(context.Background(), guard)
			defer cancel()
			cmd := exec.CommandContext(ctx, daemonBin, append([]string{"--socket", sock, "--state-dir", filepath.Join(run, "state")}, tc.args...)...)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("daemon started, or exit not 2 for a configuration error (%v):\n%s", err, out)
			}
			if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); len(lines) != 1 || !strings.Contains(lines[0], tc.want) {
				t.Fatalf("want one line saying %q, got:\n%s", tc.want, out)
			}
			if strings.Contains(string(out), "e2e-token") {
				t.Fatalf("the token was printed:\n%s", out)
			}
			if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the socket was created: %v", err)
			}
		})
	}
}

func TestCtlOverTCPAPI(t *testing.T) {
	dir := testkit.ShortDir(t)
	ca, cert, key, pool := tlsFiles(t, dir)
	const secret = "e2e-token-0123456789abcdef"
	token, wrong := filepath.Join(dir, "token"), filepath.Join(dir, "wrong")
	if err := os.WriteFile(token, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wrong, []byte("e2e-wrong-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d, addr := startTCPDaemon(t, "--api-listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key, "--token-file", token,
		"--allow-privileged=false", "--log-level", "debug")

	// The right token over TLS: ctl works as over the socket.
	var l listenerdv1.Listener
	unmarshalLine(t, strings.TrimSpace(d.mustCtl("--api", addr, "--ca", ca, "--token-file", token, "listen", "--name", "remote", "-o", "json")), &l)
	if out := d.mustCtl("--api", addr, "--ca", ca, "--token-file", token, "ls"); !strings.Contains(out, l.GetId()) {
		t.Fatalf("ls over TCP: %s", out)
	}
	// The same listener through the socket, which needs no token.
	if out := d.mustCtl("get", "remote"); !strings.Contains(out, l.GetId()) {
		t.Fatalf("get over the socket: %s", out)
	}
	// The environment stands in for the flags.
	r := d.ctlEnv([]string{"LISTENERD_API=" + addr, "LISTENERD_TOKEN_FILE=" + token}, "--ca", ca, "get", "remote")
	if r.code != 0 || !strings.Contains(r.stdout, l.GetId()) {
		t.Fatalf("ctl from the environment: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	oneLineFailure := func(what string, r result, want string) {
		t.Helper()
		if r.code == 0 || strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, "ctl: ") || !strings.Contains(r.stderr, want) {
			t.Fatalf("%s: exit %d, stderr %q, want one line with %q", what, r.code, r.stderr, want)
		}
		if strings.Contains(r.stderr, secret) || strings.Contains(r.stdout, secret) {
			t.Fatalf("%s: the token was printed", what)
		}
	}
	oneLineFailure("wrong token", d.ctl("--api", addr, "--ca", ca, "--token-file", wrong, "ls"), "not authorized")
	oneLineFailure("no token", d.ctl("--api", addr, "--ca", ca, "close", "remote"), "not authorized")
	oneLineFailure("plaintext against TLS", d.ctl("--api", addr, "--token-file", token, "--timeout", "5s", "ls"), "it may serve TLS there: give --ca")
	oneLineFailure("privileged port by policy", d.ctl("--api", addr, "--ca", ca, "--token-file", token, "listen", "--port", "80"), "permission denied: --port")

	// Health answers without a token on the TCP API.
	conn := testkit.DialGRPC(t, "passthrough:///"+addr, credentials.NewTLS(&tls.Config{RootCAs: pool}))
	resp, err := healthpb.NewHealthClient(conn).Check(testContext(t), &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health over TCP without a token: %v, %v", resp, err)
	}
	d.mustCtl("--api", addr, "--ca", ca, "--token-file", token, "close", "remote", "--force")
	d.stop()
	if strings.Contains(d.stderr.String(), secret) {
		t.Fatalf("the token reached the daemon's log")
	}
}
