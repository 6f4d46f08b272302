package ctl

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// Environment variables that stand in for --api and --token-file.
const (
	APIEnv       = "LISTENERD_API"
	TokenFileEnv = "LISTENERD_TOKEN_FILE"
)

// apiFlags say how ctl reaches the daemon: its unix socket (the default) or
// its TCP API, with TLS and credentials.
type apiFlags struct {
	addr      string // --api host:port; "" uses the socket
	tokenFile string
	ca        string
	cert, key string
	tls       bool
}

// clientKeepalive pings the daemon every 30s while a stream (watch,
// listen --follow) is open, and never on an idle connection: within the
// daemon's enforcement policy (at most one ping every 20s, none without a
// stream), so the daemon never answers with GOAWAY "too_many_pings".
var clientKeepalive = keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}

func (a *app) addAPIFlags(pf *pflag.FlagSet) {
	pf.StringVar(&a.api.addr, "api", os.Getenv(APIEnv), "host:port of the daemon's TCP API, instead of the socket (env "+APIEnv+")")
	pf.StringVar(&a.api.tokenFile, "token-file", "", "file holding the TCP API's bearer token (env "+TokenFileEnv+")")
	pf.StringVar(&a.api.ca, "ca", "", "PEM CA bundle that signed the daemon's TLS certificate")
	pf.StringVar(&a.api.cert, "cert", "", "PEM client certificate, for a daemon that wants one (mTLS; with --key)")
	pf.StringVar(&a.api.key, "key", "", "PEM private key of --cert")
	pf.BoolVar(&a.api.tls, "tls", false, "use TLS, verified with the system's roots unless --ca; implied by --ca, --cert and a --api that is not loopback")
}

// where names the daemon's address for messages.
func (a *app) where() string {
	if a.api.addr != "" {
		return a.api.addr
	}
	return a.socket
}

// endpoint returns the gRPC target and the dial options for the socket or,
// with --api, the TCP API. The TCP API is reached with TLS unless it is on
// loopback and no TLS flag is given; the token goes only over TLS or
// loopback.
func (a *app) endpoint() (string, []grpc.DialOption, error) {
	opts := []grpc.DialOption{grpc.WithKeepaliveParams(clientKeepalive)}
	f := a.api
	if f.addr == "" {
		if f.tokenFile != "" || f.ca != "" || f.cert != "" || f.key != "" || f.tls {
			return "", nil, usageErrorf("--token-file, --ca, --cert, --key and --tls need --api (the socket needs no credentials)")
		}
		return target(a.socket), append(opts, grpc.WithTransportCredentials(insecure.NewCredentials())), nil
	}
	host, _, err := net.SplitHostPort(f.addr)
	if err != nil {
		return "", nil, usageErrorf("bad --api %q: want host:port", f.addr)
	}
	if (f.cert == "") != (f.key == "") {
		return "", nil, usageErrorf("--cert and --key go together")
	}
	useTLS := f.tls || f.ca != "" || f.cert != "" || !loopbackHost(host)
	creds := insecure.NewCredentials()
	if useTLS {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if f.ca != "" {
			pem, err := os.ReadFile(f.ca)
			if err != nil {
				return "", nil, usageErrorf("--ca: %v", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return "", nil, usageErrorf("--ca %s: no PEM certificate in it", f.ca)
			}
		}
		if f.cert != "" {
			cert, err := tls.LoadX509KeyPair(f.cert, f.key)
			if err != nil {
				return "", nil, usageErrorf("--cert/--key: %v", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		creds = credentials.NewTLS(tc)
	}
	opts = append(opts, grpc.WithTransportCredentials(creds))
	tokenFile := f.tokenFile
	if tokenFile == "" {
		tokenFile = os.Getenv(TokenFileEnv)
	}
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return "", nil, usageErrorf("--token-file: %v", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" || strings.ContainsAny(tok, "\r\n") {
			return "", nil, usageErrorf("--token-file %s: want one line holding the token", tokenFile)
		}
		opts = append(opts, grpc.WithPerRPCCredentials(bearer{token: tok, secure: useTLS}))
	}
	return "passthrough:///" + f.addr, opts, nil
}

// loopbackHost says whether host is a loopback address or "localhost".
func loopbackHost(host string) bool {
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip.Unmap().IsLoopback()
	}
	return host == "localhost"
}

// bearer sends the token as "authorization: Bearer <token>" on every call.
type bearer struct {
	token  string
	secure bool // TLS: grpc refuses to send it over anything else
}

// GetRequestMetadata implements credentials.PerRPCCredentials.
func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity implements credentials.PerRPCCredentials.
func (b bearer) RequireTransportSecurity() bool { return b.secure }
