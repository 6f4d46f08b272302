package ctl

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/listenerd/listenerd/api/listenerd"
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

// options turns --socket, --api and its credentials into the Options of
// listenerd.Dial. The TCP API is reached with TLS unless it is on loopback
// and no TLS flag is given; the token goes only over TLS or loopback (the
// library sees to both). Every mistake is a usage error, found before
// anything is sent.
func (a *app) options() (listenerd.Options, error) {
	f := a.api
	if f.addr == "" {
		if f.tokenFile != "" || f.ca != "" || f.cert != "" || f.key != "" || f.tls {
			return listenerd.Options{}, usageErrorf("--token-file, --ca, --cert, --key and --tls need --api (the socket needs no credentials)")
		}
		if a.socket == "" {
			return listenerd.Options{}, usageErrorf("--socket must not be empty")
		}
		return listenerd.Options{Socket: a.socket}, nil
	}
	if _, _, err := net.SplitHostPort(f.addr); err != nil {
		return listenerd.Options{}, usageErrorf("bad --api %q: want host:port", f.addr)
	}
	if (f.cert == "") != (f.key == "") {
		return listenerd.Options{}, usageErrorf("--cert and --key go together")
	}
	o := listenerd.Options{Addr: f.addr}
	if f.tls || f.ca != "" || f.cert != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if f.ca != "" {
			pem, err := os.ReadFile(f.ca)
			if err != nil {
				return listenerd.Options{}, usageErrorf("--ca: %v", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return listenerd.Options{}, usageErrorf("--ca %s: no PEM certificate in it", f.ca)
			}
		}
		if f.cert != "" {
			cert, err := tls.LoadX509KeyPair(f.cert, f.key)
			if err != nil {
				return listenerd.Options{}, usageErrorf("--cert/--key: %v", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		o.TLS = tc
	}
	tokenFile := f.tokenFile
	if tokenFile == "" {
		tokenFile = os.Getenv(TokenFileEnv)
	}
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return listenerd.Options{}, usageErrorf("--token-file: %v", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" || strings.ContainsAny(tok, "\r\n") {
			return listenerd.Options{}, usageErrorf("--token-file %s: want one line holding the token", tokenFile)
		}
		o.Token = tok
	}
	return o, nil
}
