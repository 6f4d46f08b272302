package ctl

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/spf13/pflag"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit codes returned by Main.
const (
	// ExitOK means success, including Ctrl-C on a streaming command.
	ExitOK = 0
	// ExitError is any failure without a more specific code.
	ExitError = 1
	// ExitUsage is a bad flag or argument, or INVALID_ARGUMENT from the daemon.
	ExitUsage = 2
	// ExitNotFound is an unknown listener or connection (NOT_FOUND).
	ExitNotFound = 3
	// ExitUnavailable means the daemon cannot be reached or did not answer in
	// time (UNAVAILABLE, DEADLINE_EXCEEDED).
	ExitUnavailable = 4
)

// usageError is a mistake on the command line, found by cobra or by ctl
// before anything was sent.
type usageError struct {
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// asUsage marks err, returned before any command ran, as a usage error, and
// rephrases the flag errors of cobra and pflag that read poorly.
func asUsage(err error) error {
	var ue *usageError
	if errors.As(err, &ue) {
		err = ue.err
	}
	var iv *pflag.InvalidValueError
	if errors.As(err, &iv) {
		want := ""
		switch iv.GetFlag().Value.Type() {
		case "uint", "uint8", "uint16", "uint32", "uint64", "int", "int32", "int64":
			want = ": want a whole number"
		case "duration":
			want = ": want a duration such as 500ms, 10s or 2m"
		case "bool":
			want = ": want true or false"
		}
		return usageErrorf("invalid value %q for --%s%s", iv.GetValue(), iv.GetFlag().Name, want)
	}
	if m := exclusiveGroup.FindStringSubmatch(err.Error()); m != nil {
		return usageErrorf("--%s cannot be used together", strings.Join(strings.Fields(m[1]), " and --"))
	}
	return &usageError{err: err}
}

// exclusiveGroup matches cobra's error for MarkFlagsMutuallyExclusive.
var exclusiveGroup = regexp.MustCompile(`^if any flags in the group \[([^\]]*)\] are set none of the others can be`)

func isFlagOrArgError(err error) bool {
	var ue *usageError
	return errors.As(err, &ue)
}

// grpcStatus returns the status carried by err, if any, with its original
// message even when err wraps it.
func grpcStatus(err error) (*status.Status, bool) {
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		if st := se.GRPCStatus(); st != nil && st.Code() != codes.OK {
			return st, true
		}
	}
	return nil, false
}

// describe turns err into the words printed after "ctl: " and an exit code.
// A status error never reaches the user as "rpc error: code = ...".
func (a *app) describe(err error) (string, int) {
	var ue *usageError
	if errors.As(err, &ue) {
		return oneLine(ue.Error()), ExitUsage
	}
	var me *messageError
	if errors.As(err, &me) {
		return oneLine(me.msg), me.code
	}
	st, ok := grpcStatus(err)
	if !ok {
		return oneLine(err.Error()), ExitError
	}
	msg, code := statusWords(st, a.where(), a.timeout)
	if a.api.addr != "" && st.Code() == codes.Unavailable {
		if hint := tlsHint(st.Message()); hint != "" {
			return oneLine(fmt.Sprintf("connecting to listenerd at %s failed: %s (%s)", a.api.addr, hint, st.Message())), code
		}
	}
	// Over --api, an unreachable daemon is often a TLS mismatch: say why.
	if (a.verbose || a.api.addr != "") && (st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded) && st.Message() != "" {
		msg += " (" + st.Message() + ")"
	}
	return oneLine(msg), code
}

// tlsHints map a failed connection's message to what to change, first
// match wins: the two sides disagree about TLS.
var tlsHints = []struct{ in, hint string }{
	{"signed by unknown authority", "its certificate is not trusted: give --ca with the CA that signed it"},
	{"x509: certificate is valid for", "its certificate is for another name: give --api the name or address it was issued for"},
	{"x509: certificate has expired", "its certificate has expired (or is not valid yet): renew it"},
	{"x509:", "its certificate was refused"},
	{"first record does not look like a TLS handshake", "it serves plaintext there: drop --tls, --ca, --cert and --key"},
	{"error reading server preface", "it may serve TLS there: give --ca (or --tls for a certificate the system trusts)"},
	{"tls:", "the handshake was refused: check --ca, --cert and --key"},
}

// tlsHint says what to change when a connection to the TCP API failed
// because the two sides disagree about TLS, and "" for other failures.
func tlsHint(msg string) string {
	for _, h := range tlsHints {
		if strings.Contains(msg, h.in) {
			return h.hint
		}
	}
	return ""
}

// statusWords maps a gRPC status to words and an exit code. socket and
// timeout name what could not be reached and for how long.
func statusWords(st *status.Status, socket string, timeout fmt.Stringer) (string, int) {
	msg := st.Message()
	if msg == "" {
		msg = strings.ReplaceAll(strings.ToLower(st.Code().String()), "_", " ")
	}
	switch st.Code() {
	case codes.InvalidArgument:
		return "invalid input: " + msg, ExitUsage
	case codes.NotFound:
		return msg, ExitNotFound
	case codes.Unavailable:
		if strings.Contains(msg, "permission denied") {
			return fmt.Sprintf("cannot connect to listenerd at %s: permission denied; the socket is for the daemon's user only: run ctl as that user, or use the TCP API (--api)", socket), ExitUnavailable
		}
		return fmt.Sprintf("cannot reach listenerd at %s — is the daemon running? start it with: go run ./daemon", socket), ExitUnavailable
	case codes.DeadlineExceeded:
		return fmt.Sprintf("listenerd at %s did not answer within %s (see --timeout)", socket, timeout), ExitUnavailable
	case codes.Canceled:
		return "interrupted", ExitError
	case codes.AlreadyExists, codes.FailedPrecondition, codes.Aborted, codes.OutOfRange:
		return msg, ExitError
	case codes.PermissionDenied:
		return prefixed("permission denied", msg), ExitError
	case codes.Unauthenticated:
		return "not authorized: " + msg, ExitError
	case codes.ResourceExhausted:
		return prefixed("limit reached", msg), ExitError
	case codes.Unimplemented:
		return "this listenerd does not support that: " + msg, ExitError
	default: // Internal, Unknown, DataLoss
		return "daemon error: " + msg, ExitError
	}
}

// prefixed puts what went wrong before msg, unless the daemon's message
// says so already.
func prefixed(what, msg string) string {
	if strings.HasPrefix(msg, what) {
		return msg
	}
	return what + ": " + msg
}

// messageError is an error already phrased for the user, with its exit code.
type messageError struct {
	msg  string
	code int
}

func (e *messageError) Error() string { return e.msg }

// natsError is ctl fleet's failure to reach or use NATS (it asks NATS,
// not the daemon), phrased for the user.
func natsError(format string, args ...any) error {
	return &messageError{code: ExitUnavailable, msg: "NATS (--nats): " + fmt.Sprintf(format, args...)}
}

// oneLine folds a multi-line message into one line.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	return strings.Join(strings.Fields(s), " ")
}
