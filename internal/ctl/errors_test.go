package ctl

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

func TestStatusWords(t *testing.T) {
	const sock = "/run/l.sock"
	tests := []struct {
		code     codes.Code
		msg      string
		wantExit int
		wantMsg  string
	}{
		{codes.InvalidArgument, `spec.port: 70000 is over 65535`, ExitUsage, `invalid input: spec.port: 70000 is over 65535`},
		{codes.NotFound, `listener "web" not found`, ExitNotFound, `listener "web" not found`},
		{codes.Unavailable, "connection refused", ExitUnavailable, "cannot reach listenerd at /run/l.sock — is the daemon running? start it with: go run ./daemon"},
		{codes.DeadlineExceeded, "", ExitUnavailable, "listenerd at /run/l.sock did not answer within 10s (see --timeout)"},
		{codes.AlreadyExists, `name "web" is taken`, ExitError, `name "web" is taken`},
		{codes.FailedPrecondition, "listen tcp 127.0.0.1:6969: bind: address already in use", ExitError, "listen tcp 127.0.0.1:6969: bind: address already in use"},
		{codes.PermissionDenied, "port 80", ExitError, "permission denied: port 80"},
		{codes.PermissionDenied, "permission denied: listen tcp4 127.0.0.1:80: bind: permission denied", ExitError, "permission denied: listen tcp4 127.0.0.1:80: bind: permission denied"},
		{codes.Unavailable, "connection error: desc = \"transport: Error while dialing: dial unix /run/l.sock: connect: permission denied\"", ExitUnavailable,
			"cannot connect to listenerd at /run/l.sock: permission denied; the socket is for the daemon's user only: run ctl as that user, or use the TCP API (--api)"},
		{codes.Unauthenticated, "no token", ExitError, "not authorized: no token"},
		{codes.ResourceExhausted, "too many listeners", ExitError, "limit reached: too many listeners"},
		{codes.ResourceExhausted, "limit reached: at most 2 listeners", ExitError, "limit reached: at most 2 listeners"},
		{codes.OutOfRange, "oldest held is 10", ExitError, "oldest held is 10"},
		{codes.Canceled, "context canceled", ExitError, "interrupted"},
		{codes.Unimplemented, "method X not implemented", ExitError, "this listenerd does not support that: method X not implemented"},
		{codes.Internal, "boom", ExitError, "daemon error: boom"},
		{codes.Unknown, "", ExitError, "daemon error: unknown"},
		{codes.Aborted, "try again", ExitError, "try again"},
		{codes.DataLoss, "lost", ExitError, "daemon error: lost"},
	}
	seen := map[codes.Code]bool{}
	for _, tt := range tests {
		seen[tt.code] = true
		msg, exit := statusWords(status.New(tt.code, tt.msg), sock, 10*time.Second)
		if exit != tt.wantExit || msg != tt.wantMsg {
			t.Errorf("%v: got (%q, %d), want (%q, %d)", tt.code, msg, exit, tt.wantMsg, tt.wantExit)
		}
	}
	for c := codes.Canceled; c <= codes.Unauthenticated; c++ {
		if !seen[c] {
			t.Errorf("no case for %v", c)
		}
	}
}

func TestDescribe(t *testing.T) {
	a := newApp(nil, nil)
	a.socket = "/s"
	tests := []struct {
		err      error
		wantExit int
		wantMsg  string
	}{
		{usageErrorf("bad"), ExitUsage, "bad"},
		{errors.New("plain\nfailure"), ExitError, "plain failure"},
		{&messageError{msg: "said", code: 7}, 7, "said"},
		{fmt.Errorf("wrapped: %w", status.Error(codes.NotFound, "listener \"x\" not found")), ExitNotFound, `listener "x" not found`},
	}
	for _, tt := range tests {
		msg, exit := a.describe(tt.err)
		if exit != tt.wantExit || msg != tt.wantMsg {
			t.Errorf("%v: got (%q, %d), want (%q, %d)", tt.err, msg, exit, tt.wantMsg, tt.wantExit)
		}
	}
}

// A watch that never reached the daemon fails at once, like every other
// command: there is nothing to resume.
func TestWatchWithNoDaemonFailsAtOnce(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, args := range [][]string{{"watch"}, {"watch", "--since", "5"}} {
		r := runCtl(t, sock, args...)
		if r.code != ExitUnavailable || !strings.Contains(r.stderr, "cannot reach listenerd") || strings.Contains(r.stderr, "reconnecting") {
			t.Errorf("%v with no daemon: exit %d, stderr %q; want exit %d saying it cannot reach listenerd, and no reconnecting", args, r.code, r.stderr, ExitUnavailable)
		}
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{
		{"bogus"},
		{"listen", "--port", "x"},
		{"listen", "--nope"},
		{"listen", "extra"},
		{"get"},
		{"get", "a", "b"},
		{"close", "a", "--drain", "1s", "--force"},
		{"limit", "a", "--max-connections", "1", "--unlimited"},
		{"limit", "a"},
		{"ls", "-o", "yaml"},
		{"watch", "--kind", "nope"},
		{"connect", "no-port"},
		{"listen", "--idle-timeout", "5"},
		{"--timeout", "-1s", "ls"},
		{"listen", "--name", ""},
	} {
		r := runCtl(t, filepath.Join(t.TempDir(), "none.sock"), args...)
		if r.code != ExitUsage {
			t.Errorf("%v: exit %d, want %d (stderr %q)", args, r.code, ExitUsage, r.stderr)
		}
		if !strings.HasPrefix(r.stderr, "ctl: ") || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v: stderr %q, want one line starting ctl:", args, r.stderr)
		}
		if r.stdout != "" {
			t.Errorf("%v: stdout %q", args, r.stdout)
		}
	}
}

func TestHelpHasExamples(t *testing.T) {
	a := newApp(nil, nil)
	root := a.rootCmd()
	for _, c := range append(root.Commands(), root) {
		if c.Name() == "help" {
			continue
		}
		if strings.TrimSpace(c.Example) == "" {
			t.Errorf("%s has no Example", c.Name())
		}
	}
	r := runCtl(t, "/nonexistent.sock", "--help")
	if r.code != ExitOK || !strings.Contains(r.stdout, "Exit codes:") {
		t.Errorf("--help: exit %d, stdout %q", r.code, r.stdout)
	}
}

func TestUnreachableDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "missing.sock")
	r := runCtl(t, sock, "ls")
	want := "ctl: cannot reach listenerd at " + sock + " — is the daemon running? start it with: go run ./daemon\n"
	if r.code != ExitUnavailable || r.stderr != want {
		t.Errorf("exit %d, stderr %q; want %d, %q", r.code, r.stderr, ExitUnavailable, want)
	}
}

func TestStatusErrorsFromDaemon(t *testing.T) {
	svc := &fakeService{
		get: func(_ context.Context, r *listenerdv1.GetListenerRequest) (*listenerdv1.GetListenerResponse, error) {
			switch r.GetId() {
			case "bad id":
				return nil, status.Error(codes.InvalidArgument, "id: must not contain spaces")
			case "slow":
				return nil, status.Error(codes.DeadlineExceeded, "took too long")
			}
			return nil, status.Errorf(codes.NotFound, "listener %q not found", r.GetId())
		},
		create: func(ctx context.Context, _ *listenerdv1.CreateListenerRequest) (*listenerdv1.CreateListenerResponse, error) {
			<-ctx.Done() // never answers: the client's --timeout ends it
			return nil, status.FromContextError(ctx.Err()).Err()
		},
	}
	sock := startFake(t, svc)
	tests := []struct {
		args   []string
		exit   int
		stderr string
	}{
		{[]string{"get", "web"}, ExitNotFound, "ctl: listener \"web\" not found\n"},
		{[]string{"get", "bad id"}, ExitUsage, "ctl: invalid input: id: must not contain spaces\n"},
		{[]string{"--timeout", "20ms", "listen"}, ExitUnavailable, "ctl: listenerd at " + sock + " did not answer within 20ms (see --timeout)\n"},
		{[]string{"ls"}, ExitError, "ctl: this listenerd does not support that: method ListListeners not implemented\n"},
	}
	for _, tt := range tests {
		r := runCtl(t, sock, tt.args...)
		if r.code != tt.exit || r.stderr != tt.stderr {
			t.Errorf("%v: exit %d, stderr %q; want %d, %q", tt.args, r.code, r.stderr, tt.exit, tt.stderr)
		}
		if strings.Contains(r.stderr, "rpc error") {
			t.Errorf("%v: raw rpc error in %q", tt.args, r.stderr)
		}
	}
}

func TestTLSHint(t *testing.T) {
	for msg, want := range map[string]string{
		`connection error: desc = "transport: authentication handshake failed: tls: failed to verify certificate: x509: certificate signed by unknown authority"`: "give --ca",
		`tls: failed to verify certificate: x509: certificate is valid for localhost, not 10.0.0.5`:                                                               "issued for",
		`tls: failed to verify certificate: x509: certificate has expired or is not yet valid: current time 2030-01-01`:                                           "has expired",
		`x509: cannot validate certificate for 10.0.0.5 because it doesn't contain any IP SANs`:                                                                   "was refused",
		`connection error: desc = "error reading server preface: EOF"`:                                                                                            "it may serve TLS there",
		`tls: first record does not look like a TLS handshake`:                                                                                                    "it serves plaintext there",
		`remote error: tls: bad certificate`:                                                                                                                      "check --ca, --cert and --key",
		`connection refused`:                                                                                                                                      "",
	} {
		got := tlsHint(msg)
		if (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Errorf("tlsHint(%q) = %q, want it to say %q", msg, got, want)
		}
	}
}
