package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/testkit"
)

func u32(v uint32) *uint32 { return &v }

// snapshot is what must not change when a call is refused: the state file,
// byte for byte, and the listeners as the unix socket sees them.
type snapshot struct {
	state     []byte
	listeners []*listenerdv1.Listener
}

func takeSnapshot(t *testing.T, d *testDaemon) snapshot {
	t.Helper()
	b, err := os.ReadFile(d.state)
	if err != nil {
		t.Fatalf("state file: %v", err)
	}
	resp, err := d.unix.ListListeners(testContext(t), &listenerdv1.ListListenersRequest{})
	if err != nil {
		t.Fatalf("list over the unix socket: %v", err)
	}
	return snapshot{state: b, listeners: resp.GetListeners()}
}

func (s snapshot) equal(o snapshot) bool {
	if !bytes.Equal(s.state, o.state) || len(s.listeners) != len(o.listeners) {
		return false
	}
	for i := range s.listeners {
		if !proto.Equal(s.listeners[i], o.listeners[i]) {
			return false
		}
	}
	return true
}

// createBase creates the listener "base" over the unix socket, so that
// every daemon has a state file and a listener for the calls to aim at.
func createBase(t *testing.T, d *testDaemon) *listenerdv1.Listener {
	t.Helper()
	resp, err := d.unix.CreateListener(testContext(t), &listenerdv1.CreateListenerRequest{Name: "base", Spec: &listenerdv1.ListenerSpec{}})
	if err != nil {
		t.Fatalf("create base listener: %v", err)
	}
	return resp.GetListener()
}

// squat holds a free port in lo-hi, so that binding it is "in use".
func squat(t *testing.T, lo, hi int) (net.Listener, uint32) {
	t.Helper()
	for p := lo; p <= hi; p++ {
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err == nil {
			t.Cleanup(func() { ln.Close() })
			return ln, uint32(p)
		}
	}
	t.Fatalf("no free port in %d-%d", lo, hi)
	return nil, 0
}

type call func(ctx context.Context, conn *grpc.ClientConn) error

func svc(conn *grpc.ClientConn) listenerdv1.ListenerServiceClient {
	return listenerdv1.NewListenerServiceClient(conn)
}

func createCall(name string, spec *listenerdv1.ListenerSpec) call {
	return func(ctx context.Context, conn *grpc.ClientConn) error {
		_, err := svc(conn).CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: name, Spec: spec})
		return err
	}
}

func listCall(ctx context.Context, conn *grpc.ClientConn) error {
	_, err := svc(conn).ListListeners(ctx, &listenerdv1.ListListenersRequest{})
	return err
}

func getCall(id string) call {
	return func(ctx context.Context, conn *grpc.ClientConn) error {
		_, err := svc(conn).GetListener(ctx, &listenerdv1.GetListenerRequest{Id: id})
		return err
	}
}

func closeCall(id string) call {
	return func(ctx context.Context, conn *grpc.ClientConn) error {
		_, err := svc(conn).CloseListener(ctx, &listenerdv1.CloseListenerRequest{Id: id, Force: true})
		return err
	}
}

func updateCall(id string, limits *listenerdv1.Limits, paths ...string) call {
	return func(ctx context.Context, conn *grpc.ClientConn) error {
		_, err := svc(conn).UpdateListener(ctx, &listenerdv1.UpdateListenerRequest{
			Listener:   &listenerdv1.Listener{Id: id, Spec: &listenerdv1.ListenerSpec{Limits: limits}},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: paths},
		})
		return err
	}
}

func kickCall(id string) call {
	return func(ctx context.Context, conn *grpc.ClientConn) error {
		_, err := svc(conn).CloseConnection(ctx, &listenerdv1.CloseConnectionRequest{Id: id})
		return err
	}
}

func rebindCall(id string) call {
	return func(ctx context.Context, conn *grpc.ClientConn) error {
		_, err := svc(conn).RebindListener(ctx, &listenerdv1.RebindListenerRequest{Id: id})
		return err
	}
}

func watchCall(req *listenerdv1.WatchEventsRequest) call {
	return func(ctx context.Context, conn *grpc.ClientConn) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		st, err := svc(conn).WatchEvents(ctx, req)
		if err != nil {
			return err
		}
		_, err = st.Recv()
		return err
	}
}

func reflectionCall(ctx context.Context, conn *grpc.ClientConn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := grpc_reflection_v1.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		return err
	}
	if err := st.Send(&grpc_reflection_v1.ServerReflectionRequest{
		MessageRequest: &grpc_reflection_v1.ServerReflectionRequest_ListServices{},
	}); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	resp, err := st.Recv()
	if err == nil && len(resp.GetListServicesResponse().GetService()) == 0 {
		return status.Error(codes.Internal, "reflection listed no services")
	}
	return err
}

func healthCall(ctx context.Context, conn *grpc.ClientConn) error {
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err == nil && resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return status.Errorf(codes.Internal, "health %v", resp.GetStatus())
	}
	return err
}

// rateLimitedCall spends the only token with a create that changes nothing
// (a bad port), then tries a valid create.
func rateLimitedCall(ctx context.Context, conn *grpc.ClientConn) error {
	_, err := svc(conn).CreateListener(ctx, &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{Port: 70000}})
	if status.Code(err) != codes.InvalidArgument {
		return status.Errorf(codes.Internal, "first create: %v", err)
	}
	return createCall("fresh", &listenerdv1.ListenerSpec{})(ctx, conn)
}

// TestSecurityMatrix makes bad and unauthorised calls to real daemons over
// the TCP API with TLS, and checks each status code and that nothing
// changed: the listeners and the state file, byte for byte.
func TestSecurityMatrix(t *testing.T) {
	p := newPKI(t)
	policy := listener.Policy{
		Ports:        []listener.PortRange{{Lo: 0, Hi: 0}, {Lo: 20000, Hi: 29999}},
		NoPrivileged: true,
	}
	var err error
	if policy.Hosts, err = listener.ParseHosts("127.0.0.1,::1"); err != nil {
		t.Fatal(err)
	}
	tlsAPI := APIConfig{Listen: "127.0.0.1:0", TLSCert: p.serverCert, TLSKey: p.srvKey, TokenFile: p.tokenFile}
	// token: TLS and a bearer token, with a listener policy.
	token := startRun(t, Config{API: tlsAPI, Policy: policy, MutationRate: 1000, MutationBurst: 1000})
	// mtls: TLS and client certificates only.
	mtls := startRun(t, Config{API: APIConfig{Listen: "127.0.0.1:0", TLSCert: p.serverCert, TLSKey: p.srvKey, ClientCA: p.caFile}})
	// slow: one mutation, then none for a long while.
	slow := startRun(t, Config{API: tlsAPI, MutationRate: 1e-6, MutationBurst: 1})
	base := createBase(t, token)
	createBase(t, mtls)
	createBase(t, slow)
	_, inUse := squat(t, 20000, 29999)

	trusted := func(d *testDaemon) func(*testing.T) *grpc.ClientConn {
		return func(t *testing.T) *grpc.ClientConn { return d.dial(t, p.creds(p.pool, nil)) }
	}
	plaintext := func(d *testDaemon) func(*testing.T) *grpc.ClientConn {
		return func(t *testing.T) *grpc.ClientConn { return d.dial(t, insecure.NewCredentials()) }
	}
	withCert := func(d *testDaemon, roots bool, cert bool, rogue bool) func(*testing.T) *grpc.ClientConn {
		return func(t *testing.T) *grpc.ClientConn {
			pool := p.pool
			if !roots {
				pool = p.otherPool
			}
			var c credentials.TransportCredentials
			switch {
			case rogue:
				c = p.creds(pool, &p.rogue)
			case cert:
				c = p.creds(pool, &p.client)
			default:
				c = p.creds(pool, nil)
			}
			return d.dial(t, c)
		}
	}
	bearer, wrong := "Bearer "+p.token, "Bearer "+p.wrongToken
	neg := durationpb.New(-time.Second)
	huge := strings.Repeat("a", MaxRecvBytes+1)

	cases := []struct {
		name string
		d    *testDaemon
		conn func(*testing.T) *grpc.ClientConn
		auth string // authorization metadata; "" sends none
		call call
		want codes.Code
	}{
		// Authentication by token.
		{"no token: list", token, trusted(token), "", listCall, codes.Unauthenticated},
		{"no token: create", token, trusted(token), "", createCall("x", &listenerdv1.ListenerSpec{}), codes.Unauthenticated},
		{"no token: get", token, trusted(token), "", getCall("base"), codes.Unauthenticated},
		{"no token: close", token, trusted(token), "", closeCall("base"), codes.Unauthenticated},
		{"no token: update", token, trusted(token), "", updateCall("base", &listenerdv1.Limits{MaxConnections: u32(1)}, "spec.limits.max_connections"), codes.Unauthenticated},
		{"no token: kick", token, trusted(token), "", kickCall(base.GetId() + ".1"), codes.Unauthenticated},
		{"no token: rebind", token, trusted(token), "", rebindCall("base"), codes.Unauthenticated},
		{"no token: watch", token, trusted(token), "", watchCall(&listenerdv1.WatchEventsRequest{}), codes.Unauthenticated},
		{"no token: reflection", token, trusted(token), "", reflectionCall, codes.Unauthenticated},
		{"wrong token: create", token, trusted(token), wrong, createCall("x", &listenerdv1.ListenerSpec{}), codes.Unauthenticated},
		{"wrong token: close", token, trusted(token), wrong, closeCall("base"), codes.Unauthenticated},
		{"wrong token: reflection", token, trusted(token), wrong, reflectionCall, codes.Unauthenticated},
		{"token cut short", token, trusted(token), bearer[:len(bearer)-1], closeCall("base"), codes.Unauthenticated},
		{"token with a byte more", token, trusted(token), bearer + "x", closeCall("base"), codes.Unauthenticated},
		{"token with the wrong scheme", token, trusted(token), "Basic " + p.token, closeCall("base"), codes.Unauthenticated},
		{"token without a scheme", token, trusted(token), p.token, closeCall("base"), codes.Unauthenticated},
		{"empty bearer", token, trusted(token), "Bearer ", closeCall("base"), codes.Unauthenticated},
		{"token with white space around it", token, trusted(token), "Bearer  " + p.token + " ", closeCall("base"), codes.Unauthenticated},
		// Transport.
		{"plaintext client with the right token against TLS", token, plaintext(token), bearer, createCall("x", &listenerdv1.ListenerSpec{}), codes.Unavailable},
		{"client that does not trust the server", token, withCert(token, false, false, false), bearer, createCall("x", &listenerdv1.ListenerSpec{}), codes.Unavailable},
		{"health without a token", token, trusted(token), "", healthCall, codes.OK},
		{"health over plaintext against TLS", token, plaintext(token), "", healthCall, codes.Unavailable},
		// Size.
		{"oversize request with the token", token, trusted(token), bearer, createCall(huge, &listenerdv1.ListenerSpec{}), codes.ResourceExhausted},
		{"oversize request without a token", token, trusted(token), "", createCall(huge, &listenerdv1.ListenerSpec{}), codes.ResourceExhausted},
		{"oversize CIDR list", token, trusted(token), bearer, createCall("x", &listenerdv1.ListenerSpec{AllowCidrs: strings.Split(strings.Repeat("10.0.0.0/8,", 8000), ",")}), codes.ResourceExhausted},
		// Listener policy.
		{"privileged port by policy", token, trusted(token), bearer, createCall("x", &listenerdv1.ListenerSpec{Port: 80}), codes.PermissionDenied},
		{"port outside the allowed range", token, trusted(token), bearer, createCall("x", &listenerdv1.ListenerSpec{Port: 30000}), codes.PermissionDenied},
		{"wildcard host not allowed", token, trusted(token), bearer, createCall("x", &listenerdv1.ListenerSpec{Host: "0.0.0.0", Port: 20001}), codes.PermissionDenied},
		{"v6 wildcard host not allowed", token, trusted(token), bearer, createCall("x", &listenerdv1.ListenerSpec{Host: "::"}), codes.PermissionDenied},
		{"name taken", token, trusted(token), bearer, createCall("base", &listenerdv1.ListenerSpec{Port: 443}), codes.AlreadyExists},
		// Bad input over the TCP API, authenticated.
		{"port above 65535", token, trusted(token), bearer, createCall("x", &listenerdv1.ListenerSpec{Port: 70000}), codes.InvalidArgument},
		{"bad CIDR", token, trusted(token), bearer, createCall("x", &listenerdv1.ListenerSpec{DenyCidrs: []string{"10.0.0.0/33"}}), codes.InvalidArgument},
		{"bad host", token, trusted(token), bearer, createCall("x", &listenerdv1.ListenerSpec{Host: "no such host!"}), codes.InvalidArgument},
		{"bad name", token, trusted(token), bearer, createCall("Bad Name", &listenerdv1.ListenerSpec{}), codes.InvalidArgument},
		{"name too long", token, trusted(token), bearer, createCall(strings.Repeat("a", 64), &listenerdv1.ListenerSpec{}), codes.InvalidArgument},
		{"negative idle timeout", token, trusted(token), bearer, createCall("x", &listenerdv1.ListenerSpec{Limits: &listenerdv1.Limits{IdleTimeout: neg}}), codes.InvalidArgument},
		{"update of a path that cannot change", token, trusted(token), bearer, updateCall("base", nil, "spec.port"), codes.InvalidArgument},
		{"kick a malformed id", token, trusted(token), bearer, kickCall("nope"), codes.InvalidArgument},
		{"get unknown", token, trusted(token), bearer, getCall("ghost"), codes.NotFound},
		{"close unknown", token, trusted(token), bearer, closeCall("ghost"), codes.NotFound},
		{"address in use", token, trusted(token), bearer, createCall("x", &listenerdv1.ListenerSpec{Port: inUse}), codes.FailedPrecondition},
		{"rebind a listening listener", token, trusted(token), bearer, rebindCall("base"), codes.FailedPrecondition},
		{"watch from the future", token, trusted(token), bearer, watchCall(&listenerdv1.WatchEventsRequest{AfterSequence: proto.Uint64(1 << 40)}), codes.OutOfRange},
		// mTLS.
		{"mTLS without a client certificate", mtls, withCert(mtls, true, false, false), "", createCall("x", &listenerdv1.ListenerSpec{}), codes.Unauthenticated},
		{"mTLS without a client certificate: reflection", mtls, withCert(mtls, true, false, false), "", reflectionCall, codes.Unauthenticated},
		{"mTLS with a certificate of another CA", mtls, withCert(mtls, true, false, true), "", createCall("x", &listenerdv1.ListenerSpec{}), codes.Unavailable},
		{"mTLS health without a certificate", mtls, withCert(mtls, true, false, false), "", healthCall, codes.OK},
		{"mTLS with a token but no certificate", mtls, withCert(mtls, true, false, false), bearer, closeCall("base"), codes.Unauthenticated},
		// Rate limit of mutations.
		{"mutation beyond the rate", slow, trusted(slow), bearer, rateLimitedCall, codes.ResourceExhausted},
		{"reads are not rate limited", slow, trusted(slow), bearer, listCall, codes.OK},
	}
	if len(cases) < 30 {
		t.Fatalf("the matrix has %d cases, want at least 30", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := takeSnapshot(t, tc.d)
			ctx := testContext(t)
			if tc.auth != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", tc.auth)
			}
			err := tc.call(ctx, tc.conn(t))
			if got := status.Code(err); got != tc.want {
				t.Fatalf("got %v (%v), want %v", got, err, tc.want)
			}
			if tc.want == codes.PermissionDenied && !strings.Contains(status.Convert(err).Message(), "spec.") {
				t.Fatalf("policy refusal does not name the field: %v", err)
			}
			// Refusals by the interceptors carry a reason, as the service's do.
			want := map[codes.Code]string{codes.Unauthenticated: "UNAUTHENTICATED"}[tc.want]
			if tc.name == "mutation beyond the rate" {
				want = "RATE_LIMITED"
				if msg := status.Convert(err).Message(); !strings.HasPrefix(msg, "more than ") || strings.Contains(msg, "grpc_ratelimit") {
					t.Fatalf("rate limit message %q: want the limiter's own words", msg)
				}
			}
			if got := reasonOf(err); want != "" && got != want {
				t.Fatalf("reason %q (%v), want %s", got, err, want)
			}
			if after := takeSnapshot(t, tc.d); !before.equal(after) {
				t.Fatalf("state changed:\nbefore %s\nafter  %s\nlisteners %v -> %v", before.state, after.state, before.listeners, after.listeners)
			}
		})
	}
	for _, d := range []*testDaemon{token, mtls, slow} {
		if log := d.log.String(); strings.Contains(log, p.token) || strings.Contains(log, p.wrongToken) {
			t.Errorf("a token reached the log:\n%s", log)
		}
	}
}

// TestAuthorizedCalls is the other side of the matrix: the right
// credentials work on TCP, and the unix socket needs none.
func TestAuthorizedCalls(t *testing.T) {
	p := newPKI(t)
	d := startRun(t, Config{API: APIConfig{Listen: "127.0.0.1:0", TLSCert: p.serverCert, TLSKey: p.srvKey, ClientCA: p.caFile, TokenFile: p.tokenFile}})
	conn := d.dial(t, p.creds(p.pool, &p.client))
	ctx := metadata.AppendToOutgoingContext(testContext(t), "authorization", "bearer "+p.token)

	resp, err := svc(conn).CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: "web", Spec: &listenerdv1.ListenerSpec{}})
	if err != nil {
		t.Fatalf("create with certificate and token: %v", err)
	}
	if err := reflectionCall(ctx, conn); err != nil {
		t.Fatalf("reflection with credentials: %v", err)
	}
	if err := watchCall(&listenerdv1.WatchEventsRequest{})(ctx, conn); err != nil {
		t.Fatalf("watch with credentials: %v", err)
	}
	saved, err := os.ReadFile(d.state)
	if err != nil || !bytes.Contains(saved, []byte(resp.GetListener().GetId())) {
		t.Fatalf("state after create: %s, %v", saved, err)
	}
	// Both credentials are needed when both are configured.
	if err := listCall(testContext(t), conn); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("certificate without token: %v", err)
	}
	// The unix socket needs no token.
	if _, err := d.unix.GetListener(testContext(t), &listenerdv1.GetListenerRequest{Id: "web"}); err != nil {
		t.Fatalf("unix socket: %v", err)
	}
	if _, err := d.unix.CloseListener(testContext(t), &listenerdv1.CloseListenerRequest{Id: "web", Force: true}); err != nil {
		t.Fatalf("close over the unix socket: %v", err)
	}
	if strings.Contains(d.log.String(), p.token) {
		t.Fatalf("the token reached the log")
	}
}

// TestPlaintextLoopbackAPI: without TLS the TCP API serves only on
// loopback, and still wants the token.
func TestPlaintextLoopbackAPI(t *testing.T) {
	p := newPKI(t)
	d := startRun(t, Config{API: APIConfig{Listen: "127.0.0.1:0", TokenFile: p.tokenFile}})
	conn := d.dial(t, insecure.NewCredentials())
	if err := listCall(testContext(t), conn); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("without token: %v", err)
	}
	ctx := metadata.AppendToOutgoingContext(testContext(t), "authorization", "Bearer "+p.token)
	if err := listCall(ctx, conn); err != nil {
		t.Fatalf("with token: %v", err)
	}
}

// TestRunRefusesUnsafeAPI: Run refuses a TCP API it cannot guard before
// it touches anything (no socket, no state directory).
func TestRunRefusesUnsafeAPI(t *testing.T) {
	p := newPKI(t)
	empty := filepath.Join(p.dir, "empty-token")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withTLS := func(a APIConfig) APIConfig { a.TLSCert, a.TLSKey = p.serverCert, p.srvKey; return a }
	for _, tc := range []struct {
		name string
		api  APIConfig
		want string
	}{
		{"every interface without TLS", APIConfig{Listen: "0.0.0.0:0", TokenFile: p.tokenFile}, "without TLS"},
		{"empty host without TLS", APIConfig{Listen: ":0", TokenFile: p.tokenFile}, "without TLS"},
		{"v6 wildcard without TLS", APIConfig{Listen: "[::]:0", TokenFile: p.tokenFile}, "without TLS"},
		{"a non-loopback address without TLS", APIConfig{Listen: "192.0.2.1:0", TokenFile: p.tokenFile}, "without TLS"},
		{"loopback without authentication", APIConfig{Listen: "127.0.0.1:0"}, "without authentication"},
		{"TLS without authentication", withTLS(APIConfig{Listen: "0.0.0.0:0"}), "without authentication"},
		{"certificate without key", APIConfig{Listen: "127.0.0.1:0", TLSCert: p.serverCert, TokenFile: p.tokenFile}, "go together"},
		{"client CA without TLS", APIConfig{Listen: "127.0.0.1:0", ClientCA: p.caFile}, "needs TLS"},
		{"empty token file", withTLS(APIConfig{Listen: "127.0.0.1:0", TokenFile: empty}), "empty"},
		{"missing token file", withTLS(APIConfig{Listen: "127.0.0.1:0", TokenFile: filepath.Join(p.dir, "nope")}), "token file"},
		{"bad certificate", APIConfig{Listen: "127.0.0.1:0", TLSCert: p.caFile, TLSKey: p.srvKey, TokenFile: p.tokenFile}, "TLS certificate"},
		{"client CA that is not PEM", withTLS(APIConfig{Listen: "127.0.0.1:0", ClientCA: p.tokenFile}), "no PEM"},
		{"credentials without --api-listen", APIConfig{TokenFile: p.tokenFile}, "need --api-listen"},
		{"bad address", APIConfig{Listen: "127.0.0.1", TokenFile: p.tokenFile}, "--api-listen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := testkit.ShortDir(t)
			cfg := Config{Socket: filepath.Join(dir, "run", "listenerd.sock"), StateDir: filepath.Join(dir, "state"), API: tc.api}
			err := Run(testContext(t), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run: %v, want an error saying %q", err, tc.want)
			}
			if strings.Contains(err.Error(), p.token) {
				t.Fatalf("the error shows the token: %v", err)
			}
			for _, path := range []string{filepath.Dir(cfg.Socket), cfg.StateDir} {
				if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("%s was created (%v)", path, err)
				}
			}
		})
	}
}

// TestUnixSocketRefusesOtherUsers: another uid cannot connect to the API
// socket, neither through the 0700 directory the daemon creates nor,
// where the directory is open, through the socket's own 0600 mode.
func TestUnixSocketRefusesOtherUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a child process as another user")
	}
	d := startRun(t, Config{Ephemeral: true})
	// The test binary is in a directory only root may enter: copy it where
	// the other user can run it.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	binDir := testkit.ShortDir(t)
	bin := filepath.Join(binDir, "connect.test")
	if err := copyFile(exe, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	tryAs := func(t *testing.T, path string, uid uint32) int {
		t.Helper()
		cmd := exec.Command(bin, "-test.run=^$")
		cmd.Env = append(os.Environ(), childConnectEnv+"="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("child: %v\n%s", err, out)
		}
		if ee.ExitCode() == childOther {
			t.Fatalf("child could not try: %s", out)
		}
		return ee.ExitCode()
	}

	dirInfo, err := os.Stat(filepath.Dir(d.socket))
	if err != nil || dirInfo.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory: %v, %v", dirInfo.Mode(), err)
	}
	sockInfo, err := os.Stat(d.socket)
	if err != nil || sockInfo.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v, %v", sockInfo.Mode(), err)
	}
	if got := tryAs(t, d.socket, 0); got != childConnected {
		t.Fatalf("root's child could not connect (exit %d): the test proves nothing", got)
	}
	if got := tryAs(t, d.socket, 65534); got != childRefused {
		t.Fatalf("uid 65534 through the 0700 directory: exit %d, want refused", got)
	}

	// A socket in a directory anyone may enter: its 0600 mode refuses.
	open := testkit.ShortDir(t)
	d2 := startRun(t, Config{Ephemeral: true, Socket: filepath.Join(open, "listenerd.sock")})
	if got := tryAs(t, d2.socket, 0); got != childConnected {
		t.Fatalf("root's child could not connect (exit %d)", got)
	}
	if got := tryAs(t, d2.socket, 65534); got != childRefused {
		t.Fatalf("uid 65534 through the socket's 0600 mode: exit %d, want refused", got)
	}
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// reasonOf is the reason of err's ErrorInfo, or "".
func reasonOf(err error) string {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetReason()
		}
	}
	return ""
}

// An existing socket directory that another user could write to, or that
// another user owns, is refused before anything listens: its owner could
// put another socket in the daemon's place. One others may write to with
// the sticky bit (as /tmp) is fine.
func TestRunRefusesUnsafeSocketDirectory(t *testing.T) {
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	ownGID, _ := strconv.Atoi(me.Gid)
	for _, tc := range []struct {
		name    string
		mode    os.FileMode
		owner   int  // -1: this user
		group   int  // -1: this user's
		symlink bool // dir is a link, owned by owner, to a directory of this user's with mode
		want    string
	}{
		{"writable by others", 0o777, -1, -1, false, "mode 0777"},
		{"writable by another group", 0o770, -1, 65534, false, "mode 0770"},
		{"owned by another user", 0o700, 65534, -1, false, "owned by uid 65534"},
		{"a link of another user's", 0o700, 65534, -1, true, "symbolic link owned by uid 65534"},
		{"a link of this user's to a safe directory", 0o700, -1, -1, true, ""},
		{"a link of this user's to an open directory", 0o777, -1, -1, true, "mode 0777"},
		{"sticky and writable by others", 0o777 | os.ModeSticky, -1, -1, false, ""},
		{"this user's, readable by others", 0o755, -1, -1, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if (tc.owner >= 0 || tc.group >= 0) && os.Geteuid() != 0 {
				t.Skip("needs root to give the directory to another user or group")
			}
			base := testkit.ShortDir(t)
			dir := filepath.Join(base, "run")
			real := dir
			if tc.symlink {
				real = filepath.Join(base, "real")
			}
			if err := os.Mkdir(real, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(real, tc.mode); err != nil {
				t.Fatal(err)
			}
			if tc.symlink {
				if err := os.Symlink(real, dir); err != nil {
					t.Fatal(err)
				}
			}
			if tc.owner >= 0 || tc.group >= 0 {
				uid, gid := tc.owner, tc.group
				if uid < 0 {
					uid = os.Geteuid()
				}
				if gid < 0 {
					gid = ownGID
				}
				if err := os.Lchown(dir, uid, gid); err != nil {
					t.Fatal(err)
				}
			}
			cfg := Config{Socket: filepath.Join(dir, "listenerd.sock"), Ephemeral: true}
			if tc.want == "" {
				startRun(t, cfg) // serves, and stops at cleanup
				return
			}
			err := Run(testContext(t), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), dir) {
				t.Fatalf("Run: %v, want an error naming %s and saying %q", err, dir, tc.want)
			}
			if _, err := os.Stat(cfg.Socket); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the socket was created (%v)", err)
			}
		})
	}

	// Writable by its group, when the group is this user's own (user
	// private groups: umask 002 makes directories 0775), is fine.
	if g, err := user.LookupGroupId(me.Gid); err == nil && g.Name == me.Username {
		own := filepath.Join(testkit.ShortDir(t), "run")
		if err := os.Mkdir(own, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(own, 0o775); err != nil {
			t.Fatal(err)
		}
		startRun(t, Config{Socket: filepath.Join(own, "listenerd.sock"), Ephemeral: true})
	} else {
		t.Logf("group %s is not a private group of %s: the own-group case is not run", me.Gid, me.Username)
	}

	// A safe directory in one anyone may write to, as given or where a
	// link leads: whoever may rename it may put their own in its place.
	base := testkit.ShortDir(t)
	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(open, "me"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(open, "me"), filepath.Join(base, "link")); err != nil {
		t.Fatal(err)
	}
	for _, sock := range []string{filepath.Join(open, "run", "listenerd.sock"), filepath.Join(base, "link", "listenerd.sock")} {
		err := Run(testContext(t), Config{Socket: sock, Ephemeral: true})
		if err == nil || !strings.Contains(err.Error(), "inside "+open+", which is mode 0777") {
			t.Errorf("Run with the socket %s: %v, want %s named", sock, err, open)
		}
	}

	// A directory above that another group may write to is only warned of.
	if os.Geteuid() == 0 {
		shared := filepath.Join(testkit.ShortDir(t), "shared")
		if err := os.Mkdir(shared, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(shared, 0o775); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(shared, 0, 65534); err != nil {
			t.Fatal(err)
		}
		startRun(t, Config{Socket: filepath.Join(shared, "run", "listenerd.sock"), Ephemeral: true})
	}
}
