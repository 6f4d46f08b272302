// Package listener is the listener engine: it binds TCP listeners, accepts
// and serves their connections, enforces their limits and reports what
// happens on them to the event bus. It knows nothing of gRPC.
package listener

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"time"
	"unicode/utf8"

	"github.com/listenerd/listenerd/internal/events"
)

// Errors of the listener engine; callers branch on them with errors.Is.
var (
	ErrNotFound      = errors.New("not found")
	ErrAlreadyExists = errors.New("already exists")
	ErrAddressInUse  = errors.New("address in use")
	ErrPermission    = errors.New("permission denied")
	ErrInvalid       = errors.New("invalid argument")
	ErrNotListening  = errors.New("listener is not listening")
	ErrNotFailed     = errors.New("listener has not failed")
	ErrLimit         = errors.New("limit reached")
	ErrPersist       = errors.New("state not saved")
	ErrShuttingDown  = errors.New("daemon shutting down")
)

// FieldError is an invalid value of one request field. It unwraps to
// ErrInvalid.
type FieldError struct {
	Field string // dotted path, as in the API: "spec.host"
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *FieldError) Unwrap() error { return ErrInvalid }

// Invalid returns a *FieldError for field.
func Invalid(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Limits bound what a listener accepts; see events.Limits.
type Limits = events.Limits

// HandlerKind says what the daemon does with an accepted connection.
type HandlerKind uint8

// Handler kinds.
const (
	HandlerDiscard HandlerKind = iota
	HandlerEcho
	HandlerForward
)

func (k HandlerKind) String() string {
	switch k {
	case HandlerEcho:
		return "echo"
	case HandlerForward:
		return "forward"
	default:
		return "discard"
	}
}

// DefaultConnectTimeout bounds the forward handler's upstream dial when the
// spec leaves it unset.
const DefaultConnectTimeout = 10 * time.Second

// Handler is a handler kind with its options.
type Handler struct {
	Kind           HandlerKind
	Upstream       string        // forward: "host:port"
	ConnectTimeout time.Duration // forward: 0 means DefaultConnectTimeout
}

// Spec is what a listener was asked to be.
type Spec struct {
	Host           string // empty means 127.0.0.1
	Port           uint16
	Backlog        int // 0 means the system default
	Limits         Limits
	AllowHalfOpen  bool
	PauseOnConnect bool
	Handler        Handler
	Allow          []netip.Prefix
	Deny           []netip.Prefix
	Nagle          bool          // leave Nagle's algorithm on (TCP_NODELAY off); Go's default is off
	KeepAlive      time.Duration // keepalive probe interval; 0: default (15s), < 0: off
}

// DefaultHost is bound when a spec names no host.
const DefaultHost = "127.0.0.1"

// MaxBacklog is the largest accept queue a spec may ask for.
const MaxBacklog = 65535

var (
	nameRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	idLikeRE = regexp.MustCompile(`^ln-[0-9a-f]{8}$`)
)

// Clip shortens a value a message quotes back: a request may carry 64 KiB,
// and its error (and the error's log line) need not repeat all of it.
func Clip(s string) string {
	const keep = 64
	if len(s) <= keep+16 {
		return s
	}
	cut := keep
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s…(%d bytes)", s[:cut], len(s))
}

// ValidateName checks a listener name: empty, or 1-63 characters of
// [a-z0-9._-] starting with a letter or digit, and not shaped like an id.
func ValidateName(name string) error {
	if name == "" {
		return nil
	}
	if !nameRE.MatchString(name) {
		return Invalid("name", "%q must be 1-63 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit", Clip(name))
	}
	if idLikeRE.MatchString(name) {
		return Invalid("name", "%q has the shape of a listener id", name)
	}
	return nil
}

// State is the lifecycle state of a listener.
type State int32

// Listener states, in the order of the API's State enum.
const (
	StateUnspecified State = iota
	StateListening
	StateDraining
	StateClosed
	StateFailed
)

func (s State) String() string {
	switch s {
	case StateListening:
		return "listening"
	case StateDraining:
		return "draining"
	case StateClosed:
		return "closed"
	case StateFailed:
		return "failed"
	default:
		return "unspecified"
	}
}
