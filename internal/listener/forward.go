package listener

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultConnectTimeout bounds the forward handler's upstream dial when the
// spec leaves it unset.
const DefaultConnectTimeout = 10 * time.Second

// MaxConnectTimeout is the longest connect_timeout a forward handler takes:
// Linux gives up on an unanswered connect after about two minutes
// (net.ipv4.tcp_syn_retries), so a longer wait would never be waited.
const MaxConnectTimeout = 5 * time.Minute

// ForwardOptions are the forward handler's options, as JSON in a
// HandlerSpec.
type ForwardOptions struct {
	Upstream       string      `json:"upstream"`                  // "host:port"
	ConnectTimeout JSONSeconds `json:"connect_timeout,omitempty"` // 0: DefaultConnectTimeout
}

// ForwardTo is the spec of a forward handler to upstream.
func ForwardTo(upstream string, connectTimeout time.Duration) HandlerSpec {
	b, _ := json.Marshal(ForwardOptions{Upstream: upstream, ConnectTimeout: JSONSeconds(connectTimeout)})
	return HandlerSpec{Kind: "forward", Options: b}
}

// Forward proxies each connection to an upstream address, passing a
// half-close through in each direction.
var Forward = HandlerKind{Name: "forward", New: func(opts json.RawMessage) (Handler, error) {
	var o ForwardOptions
	if err := decodeOptions(opts, &o); err != nil {
		return nil, err
	}
	if o.Upstream == "" {
		return nil, Invalid("upstream", "required")
	}
	if err := validateUpstream(o.Upstream); err != nil {
		return nil, err
	}
	if o.ConnectTimeout < 0 {
		return nil, Invalid("connect_timeout", "must not be negative")
	}
	if d := time.Duration(o.ConnectTimeout); d > MaxConnectTimeout {
		return nil, Invalid("connect_timeout", "%v is longer than the maximum, %v", d, MaxConnectTimeout)
	}
	return &forward{upstream: o.Upstream, timeout: orDefault(time.Duration(o.ConnectTimeout), DefaultConnectTimeout)}, nil
}}

// orDefault is d, or def when d is not set.
func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// JSONSeconds is a duration written as protobuf's JSON writes one: "1.5s".
type JSONSeconds time.Duration

// MarshalJSON writes d as seconds with up to nine decimals.
func (d JSONSeconds) MarshalJSON() ([]byte, error) {
	s := strconv.FormatFloat(time.Duration(d).Seconds(), 'f', -1, 64)
	if ns := int64(d); ns%int64(time.Second) != 0 {
		s = fmt.Sprintf("%d.%09d", ns/int64(time.Second), abs(ns%int64(time.Second)))
		s = strings.TrimRight(s, "0")
	}
	return json.Marshal(s + "s")
}

func abs(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}

// UnmarshalJSON reads "1.5s" (protobuf's JSON) or any time.ParseDuration
// text.
func (d *JSONSeconds) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = JSONSeconds(v)
	return nil
}

type forward struct {
	upstream string
	timeout  time.Duration
}

// maxUpstream bounds host:port: a DNS name (253) plus ":" and a port or
// service name.
const maxUpstream = 253 + 1 + 15

// validateUpstream checks a forward upstream: a host, and a port (1-65535
// or a service name) that a dial could use.
func validateUpstream(up string) error {
	const field = "upstream"
	if len(up) > maxUpstream {
		return Invalid(field, "%d characters, at most %d", len(up), maxUpstream)
	}
	host, port, err := net.SplitHostPort(up)
	if err != nil || host == "" {
		return Invalid(field, "%q is not host:port", up)
	}
	if _, err := netip.ParseAddr(host); err != nil && !isHostName(host) {
		return Invalid(field, "%q: host %q is neither an IP address nor a host name", up, host)
	}
	if !isPortOrService(port) {
		return Invalid(field, "%q: port %q is not 1-65535 or a known service name", up, port)
	}
	if p, err := net.LookupPort("tcp", port); err != nil || p == 0 {
		return Invalid(field, "%q: port %q is not 1-65535 or a known service name", up, port)
	}
	return nil
}

// isHostName reports whether s is a DNS host name: dot-separated labels of
// 1-63 letters, digits, hyphens and underscores, at most 253 characters,
// with an optional final dot.
func isHostName(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// isPortOrService reports whether s is written as a port number (digits)
// or a service name (letters, digits and hyphens, starting with a letter).
func isPortOrService(s string) bool {
	if s == "" {
		return false
	}
	digits := s[0] >= '0' && s[0] <= '9'
	for _, r := range s {
		isDigit := r >= '0' && r <= '9'
		if digits && !isDigit || !digits && !(isDigit || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

// forwardTarget is a handler whose connections dial an upstream: the
// forward-loop walk follows it.
type forwardTarget interface{ target() string }

func (f *forward) target() string { return f.upstream }

// Serve proxies the connection to the upstream, passing a half-close
// through in each direction. On Linux pipeCopy splices without copying
// through user space, holding a pipe only while bytes flow.
func (f *forward) Serve(c *Conn) error {
	if !c.l.host.takeFDs(1) {
		return UpstreamError(errNoUpstreamFD)
	}
	defer c.l.host.giveFDs(1) // after up is closed
	up, err := f.dial(c)
	if up == nil {
		return err
	}
	defer up.Close()
	var activity *atomic.Int64
	if c.idle > 0 {
		activity = new(atomic.Int64)
		stop := c.idleWatch(c.idle, activity)
		defer stop()
	}
	if c.Filtered() {
		return both(c, up,
			func() error { return copyStage(c.Out(), touching{up, activity}) },
			func() error { return c.In(upStage{touching{up, activity}}) })
	}
	return both(c, up,
		func() error {
			n, err := pipeCopy(c.l.host, c.c, up, activity)
			c.AddOut(int(n))
			if err == nil {
				_ = c.c.CloseWrite()
			}
			return err
		},
		func() error {
			n, err := pipeCopy(c.l.host, up, c.c, activity)
			c.AddIn(int(n))
			if err == nil {
				_ = up.CloseWrite()
			}
			return err
		})
}

// errNoUpstreamFD: the descriptor budget has no room for the upstream.
var errNoUpstreamFD = errors.New("not dialled: the daemon is out of file descriptors for listeners and connections")

// both runs the two directions of a forwarded connection, toClient on a
// goroutine of its own, and returns when both are done. Each copies until
// its source ends, passing the end on. The side that fails first is the
// reason; the other direction then fails only because of the close that
// follows, and is ignored. A copy reads one side and writes the other,
// and marks its write errors (writeError).
func both(c *Conn, up *net.TCPConn, toClient, toUpstream func() error) error {
	var failed atomic.Bool
	var upErr error // the upstream-to-client direction's failure
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := toClient(); err != nil && !failed.Swap(true) {
			upErr = sideError(err, true)
			_ = c.c.Close() // ends the other direction's read of the client
		}
	}()
	if err := toUpstream(); err != nil {
		if failed.Swap(true) {
			<-done
			return upErr
		}
		_ = up.Close()
		<-done
		return sideError(err, false)
	}
	<-done
	return upErr
}

// dial connects to the upstream; a kill cancels it. It returns a nil
// connection, with the error to end with, when the dial failed or the
// connection was closed meanwhile.
func (f *forward) dial(c *Conn) (*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	kill := c.killed()
	go func() { // a kill cancels the dial
		select {
		case <-kill:
			cancel()
		case <-ctx.Done():
		}
	}()
	d := net.Dialer{ControlContext: func(ctx context.Context, _, address string, _ syscall.RawConn) error {
		if ap, err := netip.ParseAddrPort(address); err == nil {
			return c.l.host.checkLoop(ctx, c.l, ap)
		}
		return nil
	}}
	nc, err := d.DialContext(ctx, "tcp", f.upstream)
	cancel()
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
			// Said, not wrapped: a deadline is not the connection's idle
			// timeout.
			err = fmt.Errorf("no answer within the connect timeout (%v): %v", f.timeout, err)
		}
		return nil, UpstreamError(err)
	}
	up := nc.(*net.TCPConn)
	if !c.setPeer(up) { // closed while dialling
		return nil, nil
	}
	return up, nil
}

// copyStage copies src into dst until src ends, then closes dst's side;
// an error of dst's side is a writeError.
func copyStage(dst Stage, src interface{ Read([]byte) (int, error) }) error {
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	for {
		n, err := src.Read(*buf)
		if n > 0 {
			if _, werr := dst.Write((*buf)[:n]); werr != nil {
				return writeError{werr}
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if cerr := dst.CloseWrite(); cerr != nil {
					return writeError{cerr}
				}
				return nil
			}
			return err
		}
	}
}

// upStage writes the client's bytes to the upstream (its errors are
// writeErrors), and the client's FIN becomes the upstream's.
type upStage struct{ touching }

func (s upStage) CloseWrite() error { return s.c.CloseWrite() }

// sideError names the side of a forward copy's failure: the upstream's
// (upstreamError) or the client's (as it is, a reset). fromUpstream says
// whether the copy read the upstream and wrote the client.
func sideError(err error, fromUpstream bool) error {
	var we writeError
	wrote := errors.As(err, &we)
	if wrote != fromUpstream { // read the upstream, or wrote to it
		return upstreamError{err}
	}
	return err
}

// writeError marks a copy's failure to write its destination.
type writeError struct{ err error }

func (e writeError) Error() string { return e.err.Error() }
func (e writeError) Unwrap() error { return e.err }
