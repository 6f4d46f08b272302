package main

import (
	"flag"

	"github.com/listenerd/listenerd/internal/server"
)

// addSecurityFlags declares the TCP API, its credentials, the mutation
// rate limit and the listener policy on fs. The returned check, called
// once fs is parsed, completes cfg.Policy and checks the values.
func addSecurityFlags(fs *flag.FlagSet, cfg *server.Config) (check func() error) {
	var securityFlags struct {
		ports, hosts    string
		allowPrivileged bool
	}
	fs.StringVar(&cfg.API.Listen, "api-listen", "", "also serve the API on this TCP host:port (needs --token-file or --client-ca; off loopback also --tls-cert/--tls-key); port 0 picks one, printed as tcp://ADDR")
	fs.StringVar(&cfg.HTTP, "http", "", "also serve the API as HTTP/JSON on this host:port (grpc-gateway; events as server-sent events at /v1/events, OpenAPI at /openapi.json; dashboard at /); needs --token-file or --client-ca; off loopback also --tls-cert/--tls-key and --token-file; port 0 picks one, printed as http://ADDR/")
	fs.StringVar(&cfg.API.TLSCert, "tls-cert", "", "PEM certificate of the TCP API (with --tls-key)")
	fs.StringVar(&cfg.API.TLSKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.StringVar(&cfg.API.ClientCA, "client-ca", "", "PEM CA bundle: TCP API clients must present a certificate it signed (mTLS)")
	fs.StringVar(&cfg.API.TokenFile, "token-file", "", "file holding the bearer token TCP and HTTP API clients must send (trimmed; never logged)")
	fs.Float64Var(&cfg.MutationRate, "api-rate", server.DefaultMutationRate, "mutating RPCs (create, update, close, kick, rebind) a second on each transport, beyond which they fail with RESOURCE_EXHAUSTED (0: no limit)")
	fs.IntVar(&cfg.MutationBurst, "api-burst", server.DefaultMutationBurst, "burst of --api-rate")
	fs.StringVar(&securityFlags.ports, "allow-ports", "", "ports listeners may bind, as a list of ports and ranges (e.g. 0,8000-8999; 0 allows ephemeral ports); empty: any")
	fs.StringVar(&securityFlags.hosts, "allow-hosts", "", "addresses listeners may bind, as a list of IPs and CIDRs (e.g. 127.0.0.1,::1,10.0.0.0/8); 0.0.0.0 and :: only when listed; empty: any")
	fs.BoolVar(&securityFlags.allowPrivileged, "allow-privileged", true, "allow ports below 1024 when the process may bind them (false refuses them whatever the rights)")
	return func() error {
		var err error
		cfg.Policy, err = server.ParsePolicy(securityFlags.ports, securityFlags.hosts, securityFlags.allowPrivileged)
		return err
	}
}
