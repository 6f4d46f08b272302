package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/ratelimit"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/service"
)

// APIConfig is the optional TCP API, served beside the unix socket.
type APIConfig struct {
	Listen    string // "host:port" to serve on; "" serves no TCP API
	TLSCert   string // PEM certificate (chain) of the server; with TLSKey, enables TLS
	TLSKey    string // PEM private key of TLSCert
	ClientCA  string // PEM CA bundle; enables mTLS: a client must present a certificate it signed
	TokenFile string // file holding the bearer token clients must send
	// MaxConns caps the client connections served at once; more wait in
	// the kernel's queue. 0: half the descriptor reserve, at least 16, at
	// most 1,024 (maxConns).
	MaxConns int
	// UnauthTimeout bounds a connection's TLS handshake and first
	// authenticated call; UnauthPerSource caps the connections without
	// one from a source (see gate). 0: DefaultUnauthTimeout,
	// DefaultUnauthPerSource.
	UnauthTimeout   time.Duration
	UnauthPerSource int
}

// Limits of the gRPC servers, on both transports. Requests are tiny (the
// largest is a spec with its CIDR lists), so 64 KiB is ample, for the
// message and for its headers (a bearer token and a few more): grpc-go's
// own header limit is 16 MiB a call, checked before any authentication.
const (
	MaxRecvBytes         = 64 << 10
	MaxHeaderBytes       = 64 << 10
	MaxConcurrentStreams = 128
	// MaxIdle closes a client connection with no call open for this long;
	// clients reconnect when they next call.
	MaxIdle = 5 * time.Minute
	// KeepaliveMinTime is the shortest ping interval a client may use; ctl
	// pings every 30s, and only while a stream is open.
	KeepaliveMinTime  = 20 * time.Second
	ConnectionTimeout = 10 * time.Second
	// DefaultMutationRate and DefaultMutationBurst bound the mutating RPCs
	// (create, update, close, kick, rebind) a second, on each transport.
	DefaultMutationRate  = 100
	DefaultMutationBurst = 200
	// minTokenLen is the shortest token accepted without a warning.
	minTokenLen = 16
)

// mutating are the RPCs the rate limit applies to.
var mutating = map[string]bool{
	listenerdv1.ListenerService_CreateListener_FullMethodName:  true,
	listenerdv1.ListenerService_UpdateListener_FullMethodName:  true,
	listenerdv1.ListenerService_CloseListener_FullMethodName:   true,
	listenerdv1.ListenerService_CloseConnection_FullMethodName: true,
	listenerdv1.ListenerService_RebindListener_FullMethodName:  true,
	listenerdv1.ListenerService_AddFault_FullMethodName:        true,
	listenerdv1.ListenerService_UpdateFault_FullMethodName:     true,
	listenerdv1.ListenerService_RemoveFault_FullMethodName:     true,
}

// transport is what differs between the servers of the two transports:
// the unix socket (guarded by its file mode, no authentication) and the
// TCP API (TLS and authentication).
type transport struct {
	name    string                           // "unix" or "tcp", for logs
	creds   credentials.TransportCredentials // nil: plaintext
	auth    auth.AuthFunc                    // nil: no authentication
	limiter ratelimit.Limiter                // nil: mutations are not limited
	// gate, with auth, is told of each connection whose call passed
	// authentication, and bounds the handshake; refusals rate-limits the
	// log of calls refused for their credentials.
	gate     *gate
	refusals *refusalLog
}

// options returns the server options of the transport: the hardening shared
// by both, its credentials, and the authentication and rate-limit
// interceptors, which run after logging and recovery.
func (t transport) options() []grpc.ServerOption {
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxRecvBytes),
		grpc.MaxHeaderListSize(MaxHeaderBytes),
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: KeepaliveMinTime}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 2 * time.Minute, Timeout: 20 * time.Second, MaxConnectionIdle: MaxIdle}),
		grpc.ConnectionTimeout(t.handshakeTimeout()),
	}
	if t.creds != nil {
		opts = append(opts, grpc.Creds(t.creds))
	}
	var unary []grpc.UnaryServerInterceptor
	var stream []grpc.StreamServerInterceptor
	if t.auth != nil {
		// Health stays open so probes need no credentials; everything else,
		// reflection included, is authenticated. Authentication runs before
		// the rate limit, so calls without credentials spend no tokens.
		open := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
			return c.Service != healthpb.Health_ServiceDesc.ServiceName
		})
		authFn := t.auth
		if t.gate != nil {
			authFn = func(ctx context.Context) (context.Context, error) {
				ctx, err := t.auth(ctx)
				if err == nil {
					t.gate.trust(ctx)
				}
				return ctx, err
			}
		}
		unary = append(unary, selector.UnaryServerInterceptor(auth.UnaryServerInterceptor(authFn), open))
		stream = append(stream, selector.StreamServerInterceptor(auth.StreamServerInterceptor(authFn), open))
	}
	if t.limiter != nil {
		isMutation := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
			return mutating[c.FullMethod()]
		})
		unary = append(unary, selector.UnaryServerInterceptor(withReason(ratelimit.UnaryServerInterceptor(t.limiter)), isMutation))
	}
	if len(unary) > 0 {
		opts = append(opts, grpc.ChainUnaryInterceptor(unary...))
	}
	if len(stream) > 0 {
		opts = append(opts, grpc.ChainStreamInterceptor(stream...))
	}
	return opts
}

// handshakeTimeout bounds a connection's handshake: on the TCP API, the
// time its gate gives it to authenticate.
func (t transport) handshakeTimeout() time.Duration {
	if t.gate != nil {
		return t.gate.timeout
	}
	return ConnectionTimeout
}

// withReason gives the rate limiter's refusals (the calls it stops before
// the handler) the limiter's own words and an ErrorInfo with the reason
// RATE_LIMITED, as every other error of the API has. The middleware's
// message names the method and itself; the limiter leaves its refusal in
// the call's context instead.
func withReason(limit grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		refusal := new(error)
		resp, err := limit(context.WithValue(ctx, refusalKey{}, refusal), req, info, handler)
		if err != nil && *refusal != nil {
			return nil, service.Status(fmt.Errorf("%v; retry later: %w", *refusal, service.ErrRateLimited))
		}
		return resp, err
	}
}

// refusalKey holds, in a call's context, where mutationLimiter leaves its
// refusal for withReason.
type refusalKey struct{}

// mutationLimiter is a token bucket for the ratelimit interceptor.
type mutationLimiter struct{ l *rate.Limiter }

func newMutationLimiter(perSecond float64, burst int) ratelimit.Limiter {
	if perSecond <= 0 {
		return nil
	}
	return mutationLimiter{rate.NewLimiter(rate.Limit(perSecond), max(burst, 1))}
}

// Limit implements ratelimit.Limiter.
func (m mutationLimiter) Limit(ctx context.Context) error {
	if m.l.Allow() {
		return nil
	}
	err := fmt.Errorf("more than %g changes a second (burst %d)", float64(m.l.Limit()), m.l.Burst())
	if refusal, ok := ctx.Value(refusalKey{}).(*error); ok {
		*refusal = err
	}
	return err
}

// tcpAPI is the prepared TCP API: credentials and authentication, loaded
// and checked before anything is bound.
type tcpAPI struct {
	addr     string
	maxConns int
	creds    credentials.TransportCredentials // nil: plaintext (loopback only)
	mTLS     bool
	token    bool
	loopback bool

	// unauthTimeout and unauthPerSource bound the connections without
	// credentials (gate).
	unauthTimeout   time.Duration
	unauthPerSource int
}

// prepareAPI loads and checks the TCP API's TLS files and token. The TCP
// API must authenticate (bearer token and/or client certificate), since
// every local user can reach loopback; off loopback it must also use TLS.
// The token itself is kept only as its SHA-256, so it cannot reach a log.
// withHTTP says the HTTP API (--http) uses the same files.
func prepareAPI(ctx context.Context, cfg APIConfig, withHTTP bool, fdReserve int64, log *slog.Logger) (*tcpAPI, auth.AuthFunc, error) {
	if cfg.Listen == "" {
		if !withHTTP && (cfg.TLSCert != "" || cfg.TLSKey != "" || cfg.ClientCA != "" || cfg.TokenFile != "") {
			return nil, nil, errors.New("--tls-cert, --tls-key, --client-ca and --token-file need --api-listen or --http")
		}
		return nil, nil, nil
	}
	api := &tcpAPI{addr: cfg.Listen, maxConns: cfg.MaxConns, unauthTimeout: cfg.UnauthTimeout, unauthPerSource: cfg.UnauthPerSource}
	if api.maxConns <= 0 {
		api.maxConns = maxConns(fdReserve)
	}
	if api.unauthTimeout <= 0 {
		api.unauthTimeout = DefaultUnauthTimeout
	}
	if api.unauthPerSource <= 0 {
		api.unauthPerSource = DefaultUnauthPerSource
	}
	loopback, err := isLoopback(ctx, "--api-listen", cfg.Listen)
	if err != nil {
		return nil, nil, err
	}
	api.loopback = loopback
	if err := checkTLSFlags(cfg); err != nil {
		return nil, nil, err
	}
	switch {
	case cfg.TLSCert == "" && !loopback:
		return nil, nil, fmt.Errorf("refusing to serve the API on %s without TLS: it is not a loopback address (give --tls-cert and --tls-key)", cfg.Listen)
	case cfg.TokenFile == "" && cfg.ClientCA == "":
		return nil, nil, fmt.Errorf("refusing to serve the API on %s without authentication (give --token-file and/or --client-ca)", cfg.Listen)
	}
	if cfg.TLSCert != "" {
		tc, err := serverTLS(cfg.TLSCert, cfg.TLSKey, cfg.ClientCA)
		if err != nil {
			return nil, nil, err
		}
		api.creds = credentials.NewTLS(tc)
		api.mTLS = cfg.ClientCA != ""
	}
	tokenSum, err := loadToken(cfg.TokenFile, log)
	if err != nil {
		return nil, nil, err
	}
	api.token = tokenSum != nil
	return api, authFunc(api.mTLS, tokenSum), nil
}

// checkTLSFlags checks the TLS flags against each other.
func checkTLSFlags(cfg APIConfig) error {
	switch {
	case (cfg.TLSCert == "") != (cfg.TLSKey == ""):
		return errors.New("--tls-cert and --tls-key go together")
	case cfg.TLSCert == "" && cfg.ClientCA != "":
		return errors.New("--client-ca needs TLS (--tls-cert and --tls-key)")
	}
	return nil
}

// loadToken reads the token file, when one is named, and returns the
// token's SHA-256; it warns of a short token or a file others may read.
func loadToken(file string, log *slog.Logger) (*[sha256.Size]byte, error) {
	if file == "" {
		return nil, nil
	}
	sum, n, err := readToken(file)
	if err != nil {
		return nil, err
	}
	if n < minTokenLen {
		log.Warn("API token is short; use at least 32 random bytes", "file", file, "length", n)
	}
	if fi, err := os.Stat(file); err == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("API token file is readable by others; chmod 600 it", "file", file, "mode", fi.Mode().Perm())
	}
	return &sum, nil
}

// authFunc checks a call on the TCP API: a verified client certificate
// when requireCert, the bearer token when tokenSum is set.
func authFunc(requireCert bool, tokenSum *[sha256.Size]byte) auth.AuthFunc {
	return func(ctx context.Context) (context.Context, error) {
		if requireCert {
			p, _ := peer.FromContext(ctx)
			var ti credentials.TLSInfo
			if p != nil {
				ti, _ = p.AuthInfo.(credentials.TLSInfo)
			}
			if len(ti.State.VerifiedChains) == 0 {
				return nil, service.Status(fmt.Errorf("no client certificate signed by the daemon's client CA was presented (a TLS client does not send one of another CA): %w", service.ErrUnauthenticated))
			}
		}
		if tokenSum != nil {
			tok, err := auth.AuthFromMD(ctx, "bearer")
			if err != nil {
				return nil, service.Status(fmt.Errorf("missing bearer token (metadata authorization: Bearer <token>): %w", service.ErrUnauthenticated))
			}
			// Hashing first makes the comparison constant-time whatever the
			// lengths.
			sum := sha256.Sum256([]byte(tok))
			if subtle.ConstantTimeCompare(sum[:], tokenSum[:]) != 1 {
				return nil, service.Status(fmt.Errorf("invalid bearer token: %w", service.ErrUnauthenticated))
			}
		}
		return ctx, nil
	}
}

// readToken reads a token file, trimmed of surrounding white space, and
// returns its SHA-256 and length.
func readToken(path string) ([sha256.Size]byte, int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return [sha256.Size]byte{}, 0, fmt.Errorf("token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return [sha256.Size]byte{}, 0, fmt.Errorf("token file %s is empty", path)
	}
	if strings.ContainsAny(tok, "\r\n") {
		return [sha256.Size]byte{}, 0, fmt.Errorf("token file %s holds more than one line", path)
	}
	return sha256.Sum256([]byte(tok)), len(tok), nil
}

// serverTLS is the TCP API's TLS configuration. With a client CA, a client
// certificate is verified when given, and required by the authentication
// interceptor, so a client without one gets UNAUTHENTICATED rather than a
// failed handshake.
func serverTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client CA %s: no PEM certificate in it", caFile)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return tc, nil
}

// isLoopback says whether addr ("host:port", the value of flag) names
// only loopback addresses. An empty host (every interface) is not
// loopback.
func isLoopback(ctx context.Context, flag, addr string) (bool, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, fmt.Errorf("%s %q: %v", flag, addr, err)
	}
	if host == "" {
		return false, nil
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip.Unmap().IsLoopback(), nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(ips) == 0 {
		return false, fmt.Errorf("%s %q: cannot resolve %s: %v", flag, addr, host, err)
	}
	for _, ip := range ips {
		if !ip.Unmap().IsLoopback() {
			return false, nil
		}
	}
	return true, nil
}

// listenTCP binds the TCP API and checks that a plaintext API really is on
// loopback.
// maxConns is the default cap of the TCP API's client connections: half
// the descriptors kept from the listeners (fdReserve), at least 16, at
// most 1,024. Anyone who can reach the port may connect before being
// refused: the cap keeps them from taking the descriptors the daemon
// needs for its socket, its state and its listeners.
func maxConns(fdReserve int64) int {
	return int(min(1024, max(16, fdReserve/2)))
}

// listenTCP opens the TCP API's listener, capped at api.maxConns client
// connections, of which those without credentials are bounded (gate).
func listenTCP(api *tcpAPI, refusals *refusalLog) (*gate, error) {
	ln, err := net.Listen(listener.ListenNetwork(api.addr), api.addr)
	if err != nil {
		return nil, fmt.Errorf("API listen on %s: %w", api.addr, err)
	}
	if ta, ok := ln.Addr().(*net.TCPAddr); api.creds == nil && (!ok || !ta.IP.IsLoopback()) {
		ln.Close()
		return nil, fmt.Errorf("refusing to serve the API on %s without TLS: it is not a loopback address", ln.Addr())
	}
	return newGate(ln, api.maxConns, api.unauthPerSource, api.unauthTimeout, refusals), nil
}
