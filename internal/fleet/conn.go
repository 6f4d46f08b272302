package fleet

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// ConnConfig says how to reach NATS: the daemon's and ctl's --nats flags.
type ConnConfig struct {
	URL       string // --nats: one URL or a comma-separated list (nats://, tls://)
	Creds     string // --nats-creds: a credentials file (JWT and NKey seed)
	TokenFile string // --nats-token-file: a file holding a token
	CA        string // --nats-ca: PEM CA bundle; TLS to servers it signed
	Name      string // the connection's name, seen by the server's monitoring
}

// Enabled reports whether NATS is asked for at all.
func (c ConnConfig) Enabled() bool { return c.URL != "" }

// Check refuses, naming the flag, what cannot work: a malformed URL, both
// credentials at once, files that cannot be read, and a server off
// loopback without TLS.
func (c ConnConfig) Check() error {
	if c.URL == "" {
		if c.Creds != "" || c.TokenFile != "" || c.CA != "" {
			return errors.New("--nats-creds, --nats-token-file and --nats-ca need --nats")
		}
		return nil
	}
	if c.Creds != "" && c.TokenFile != "" {
		return errors.New("--nats-creds and --nats-token-file: give one of them")
	}
	for _, f := range []struct{ flag, path string }{{"--nats-creds", c.Creds}, {"--nats-token-file", c.TokenFile}, {"--nats-ca", c.CA}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("%s: %v", f.flag, err)
		}
	}
	for raw := range strings.SplitSeq(c.URL, ",") {
		raw = strings.TrimSpace(raw)
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			return fmt.Errorf("--nats %q: not a URL such as nats://127.0.0.1:4222", raw)
		}
		switch u.Scheme {
		case "nats", "tls":
		default:
			return fmt.Errorf("--nats %q: scheme %q: use nats:// or tls://", raw, u.Scheme)
		}
		if u.Scheme != "tls" && c.CA == "" && !loopback(u.Hostname()) {
			return fmt.Errorf("--nats %q: a server off loopback needs TLS: give --nats-ca (or a tls:// URL for the system's roots)", raw)
		}
	}
	return nil
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Connect connects after Check, with the credentials and TLS asked for.
// It reconnects for ever, and does not buffer publishes while
// disconnected: they fail at once, and the publisher resumes from what
// was acknowledged.
func (c ConnConfig) Connect(extra ...nats.Option) (*nats.Conn, error) {
	if err := c.Check(); err != nil {
		return nil, err
	}
	opts := []nats.Option{nats.Name(c.Name), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectBufSize(-1)}
	if c.Creds != "" {
		opts = append(opts, nats.UserCredentials(c.Creds))
	}
	if c.TokenFile != "" {
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("--nats-token-file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return nil, fmt.Errorf("--nats-token-file %s: empty", c.TokenFile)
		}
		opts = append(opts, nats.Token(tok))
	}
	if c.CA != "" {
		opts = append(opts, nats.RootCAs(c.CA))
	}
	return nats.Connect(c.URL, append(opts, extra...)...)
}
