package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protojson"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/dashboard"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/metrics"
)

// webAPI is the prepared HTTP/JSON API (--http): its TLS configuration and
// authentication, loaded and checked before anything is bound.
type webAPI struct {
	addr       string
	host       string      // the host of addr, which Host headers may name
	tls        *tls.Config // nil: plaintext (loopback only)
	auth       auth.AuthFunc
	clientCert bool // a verified client certificate is required (--client-ca)
	maxConns   int
}

// prepareHTTP checks --http against the TCP API's files, by the TCP API's
// rules: it must authenticate (--token-file and/or --client-ca), since
// every local user can reach loopback and the daemon often runs as root;
// off loopback it needs TLS (--tls-cert, --tls-key) and a token. With a
// token every call needs it, and with --client-ca a client certificate.
// nil when --http is not given.
func prepareHTTP(ctx context.Context, cfg Config, fdReserve int64, log *slog.Logger) (*webAPI, error) {
	if cfg.HTTP == "" {
		return nil, nil
	}
	a := cfg.API
	loopback, err := isLoopback(ctx, "--http", cfg.HTTP)
	if err != nil {
		return nil, err
	}
	if err := checkTLSFlags(a); err != nil {
		return nil, err
	}
	switch {
	case !loopback && (a.TLSCert == "" || a.TokenFile == ""):
		return nil, fmt.Errorf("refusing to serve HTTP on %s: it is not a loopback address, so it needs TLS (--tls-cert and --tls-key) and a token (--token-file)", cfg.HTTP)
	case a.TokenFile == "" && a.ClientCA == "":
		return nil, fmt.Errorf("refusing to serve HTTP on %s without authentication (give --token-file and/or --client-ca): every local user could call it otherwise", cfg.HTTP)
	}
	host, _, _ := net.SplitHostPort(cfg.HTTP)
	web := &webAPI{addr: cfg.HTTP, host: strings.ToLower(host), clientCert: a.ClientCA != "", maxConns: maxConns(fdReserve)}
	if a.TLSCert != "" {
		if web.tls, err = serverTLS(a.TLSCert, a.TLSKey, a.ClientCA); err != nil {
			return nil, err
		}
	}
	warn := log
	if a.Listen != "" { // prepareAPI has warned of the token already
		warn = slog.New(slog.DiscardHandler)
	}
	sum, err := loadToken(a.TokenFile, warn)
	if err != nil {
		return nil, err
	}
	if sum != nil {
		web.auth = authFunc(false, sum) // the certificate is checked by guard
	}
	return web, nil
}

// listenHTTP binds the HTTP API, or takes the socket an upgrade handed
// over (inherited), and checks that a plaintext one is on loopback.
func listenHTTP(web *webAPI, inherited net.Listener) (net.Listener, error) {
	ln := inherited
	if ln == nil {
		var err error
		if ln, err = net.Listen(listener.ListenNetwork(web.addr), web.addr); err != nil {
			return nil, fmt.Errorf("HTTP listen on %s: %w", web.addr, err)
		}
	}
	if ta, ok := ln.Addr().(*net.TCPAddr); web.tls == nil && (!ok || !ta.IP.IsLoopback()) {
		ln.Close()
		return nil, fmt.Errorf("refusing to serve HTTP on %s without TLS: it is not a loopback address", ln.Addr())
	}
	return ln, nil
}

// SSE timing: a comment line every sseKeepalive keeps proxies from
// closing a quiet stream, and a client that takes more than sseWriteTimeout
// to take an event is cut (it reconnects with Last-Event-ID).
const (
	sseKeepalive    = 15 * time.Second
	sseWriteTimeout = 30 * time.Second
)

// webServer serves the HTTP/JSON API: grpc-gateway's handlers and the
// server-sent events, all calling the daemon's service through a gRPC
// server of their own (in memory), with the interceptors every transport
// has: logging, recovery, metrics, authentication and the mutation limit.
type webServer struct {
	web       *webAPI
	log       *slog.Logger
	grpc      *grpc.Server
	inner     *bufconn.Listener
	conn      *grpc.ClientConn
	client    listenerdv1.ListenerServiceClient
	gw        *runtime.ServeMux
	marshaler runtime.Marshaler
	srv       *http.Server
	addr      net.Addr
	closing   chan struct{} // closed by stop: event streams end
	wg        sync.WaitGroup
}

// jsonMarshaler is protojson as the API writes it: lowerCamelCase names,
// every field, zeros included (so counts of 0 are there); it reads proto
// and JSON names alike and refuses unknown fields.
var jsonMarshaler = &runtime.HTTPBodyMarshaler{Marshaler: &runtime.JSONPb{
	MarshalOptions:   protojson.MarshalOptions{EmitDefaultValues: true},
	UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
}}

// startHTTP serves the HTTP API on ln until stop.
func startHTTP(web *webAPI, ln net.Listener, svc listenerdv1.ListenerServiceServer, tr transport, met *metrics.Metrics, log *slog.Logger) (*webServer, error) {
	s := &webServer{web: web, log: log.With("api", "http"), inner: bufconn.Listen(256 << 10), marshaler: jsonMarshaler,
		addr: ln.Addr(), closing: make(chan struct{})}
	tr.auth = web.auth
	if web.auth != nil {
		tr.refusals = newRefusalLog(s.log)
	}
	s.grpc, _ = newGRPCServer(svc, log, tr, met)
	conn, err := grpc.NewClient("passthrough:///listenerd-http",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return s.inner.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		ln.Close()
		s.inner.Close()
		return nil, fmt.Errorf("HTTP API: %w", err)
	}
	s.conn, s.client = conn, listenerdv1.NewListenerServiceClient(conn)
	s.gw = runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, s.marshaler),
		runtime.WithDisableHTTPMethodOverride(),
		runtime.WithDisablePathLengthFallback(),
	)
	if err := listenerdv1.RegisterListenerServiceHandlerClient(context.Background(), s.gw, s.client); err != nil {
		conn.Close()
		ln.Close()
		s.inner.Close()
		return nil, fmt.Errorf("HTTP API: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", s.gw) // the gateway's JSON errors for what no route takes
	mux.Handle("GET /{$}", dashboard.Handler())
	mux.Handle("GET /ui/", dashboard.Handler())
	mux.HandleFunc("GET /v1/events", s.events)
	mux.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(listenerdv1.OpenAPI)
	})
	s.srv = &http.Server{
		Handler:           s.guard(mux),
		ReadHeaderTimeout: ConnectionTimeout,
		IdleTimeout:       MaxIdle,
		MaxHeaderBytes:    MaxHeaderBytes,
		TLSConfig:         web.tls,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	limited := netutil.LimitListener(ln, web.maxConns)
	s.wg.Go(func() {
		if err := s.grpc.Serve(s.inner); err != nil {
			s.log.Error("HTTP API's gRPC server stopped", "err", err)
		}
	})
	s.wg.Go(func() {
		var err error
		if web.tls != nil {
			err = s.srv.ServeTLS(limited, "", "")
		} else {
			err = s.srv.Serve(limited)
		}
		if !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("HTTP API stopped", "err", err)
		}
	})
	return s, nil
}

// url is where the API is served, as the daemon prints it.
func (s *webServer) url() string {
	if s.web.tls != nil {
		return fmt.Sprintf("https://%s/", s.addr)
	}
	return fmt.Sprintf("http://%s/", s.addr)
}

// stop ends the event streams, lets calls in flight finish for up to
// limit, closes the server, then the in-memory gRPC server behind it, and
// waits for their goroutines.
func (s *webServer) stop(limit time.Duration) {
	close(s.closing)
	ctx, cancel := context.WithTimeout(context.Background(), max(limit, time.Second))
	if err := s.srv.Shutdown(ctx); err != nil {
		_ = s.srv.Close()
	}
	cancel()
	stopGRPC(s.grpc, limit)
	s.conn.Close()
	s.wg.Wait()
}

// guard refuses, before any route: a Host header that names neither this
// address nor a loopback one (DNS rebinding: a web page whose name
// resolves to 127.0.0.1), a missing client certificate when --client-ca
// asks for one, and a request with a body that is not application/json
// (a form a web page posts across sites sends another type, and a type
// other than those three makes the browser ask first, which is refused
// as no CORS header is ever sent). Bodies are capped at MaxRecvBytes.
func (s *webServer) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.allowedHost(r.Host) {
			s.refuse(w, r, http.StatusForbidden, codes.PermissionDenied,
				fmt.Sprintf("Host %q is not this daemon's address: use %s, localhost or a loopback address", r.Host, s.addr))
			return
		}
		if s.web.clientCert && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
			s.refuse(w, r, http.StatusUnauthorized, codes.Unauthenticated,
				"no client certificate signed by the daemon's client CA was presented")
			return
		}
		if hasBody(r) && !isJSON(r.Header.Get("Content-Type")) {
			s.refuse(w, r, http.StatusUnsupportedMediaType, codes.InvalidArgument,
				fmt.Sprintf("Content-Type %q: a request with a body must be application/json", r.Header.Get("Content-Type")))
			return
		}
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, MaxRecvBytes)
		}
		next.ServeHTTP(w, r)
	})
}

// allowedHost reports whether a Host header may reach the API: over TLS
// any (the certificate binds the name), else localhost, a loopback
// address, or the host --http names.
func (s *webServer) allowedHost(h string) bool {
	if s.web.tls != nil {
		return true
	}
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	h = strings.TrimSuffix(strings.ToLower(strings.Trim(h, "[]")), ".")
	if h == "" {
		return false
	}
	if h == "localhost" || strings.HasSuffix(h, ".localhost") || h == s.web.host {
		return true
	}
	ip, err := netip.ParseAddr(h)
	return err == nil && ip.Unmap().IsLoopback()
}

// hasBody reports whether r carries a body, or is of a method that does.
func hasBody(r *http.Request) bool {
	switch r.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
		return true
	}
	return r.ContentLength != 0
}

// isJSON reports whether a Content-Type is application/json.
func isJSON(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && mt == "application/json"
}

// refuse answers with the gateway's error body ({"code", "message",
// "details"}) and the HTTP status given.
func (s *webServer) refuse(w http.ResponseWriter, r *http.Request, httpStatus int, code codes.Code, msg string) {
	s.log.Debug("HTTP request refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "status", httpStatus, "err", msg)
	b, err := s.marshaler.Marshal(status.New(code, msg).Proto())
	if err != nil {
		b = []byte(`{"code":13,"message":"internal error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpStatus)
	_, _ = w.Write(b)
}

// writeAll writes b, within sseWriteTimeout, and flushes.
func writeAll(w io.Writer, rc *http.ResponseController, b []byte) error {
	_ = rc.SetWriteDeadline(time.Now().Add(sseWriteTimeout))
	if _, err := w.Write(b); err != nil {
		return err
	}
	return rc.Flush()
}
