package service

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/listener"
)

// ErrorDomain is the domain of the errdetails.ErrorInfo attached to every
// error the service returns.
const ErrorDomain = "listenerd.v1"

// Errors raised outside the listener engine, mapped like its own.
var (
	// ErrUnauthenticated: a TCP API call without valid credentials.
	ErrUnauthenticated = errors.New("not authenticated")
	// ErrRateLimited: a change over the daemon's --api-rate.
	ErrRateLimited = errors.New("rate limited")
	// ErrBootMismatch: a watch resume point from another daemon boot.
	ErrBootMismatch = errors.New("boot id mismatch")
)

// errorTable maps the domain's sentinel errors to status codes, once, at
// the boundary. The reason goes into ErrorInfo so clients can branch on it.
var errorTable = []struct {
	err    error
	code   codes.Code
	reason string
}{
	{listener.ErrInvalid, codes.InvalidArgument, "INVALID_ARGUMENT"},
	{listener.ErrNotFound, codes.NotFound, "NOT_FOUND"},
	{listener.ErrAlreadyExists, codes.AlreadyExists, "ALREADY_EXISTS"},
	{listener.ErrAddressInUse, codes.FailedPrecondition, "ADDRESS_IN_USE"},
	{listener.ErrNotListening, codes.FailedPrecondition, "NOT_LISTENING"},
	{listener.ErrNotFailed, codes.FailedPrecondition, "NOT_FAILED"},
	{listener.ErrNotStream, codes.FailedPrecondition, "NOT_STREAM"},
	{listener.ErrNoHandover, codes.FailedPrecondition, "NO_HANDOVER"},
	{listener.ErrOfferedElsewhere, codes.FailedPrecondition, "OFFERED_ELSEWHERE"},
	{listener.ErrHandoverHandler, codes.FailedPrecondition, "HANDOVER_HANDLER"},
	{listener.ErrPermission, codes.PermissionDenied, "PERMISSION_DENIED"},
	{listener.ErrLimit, codes.ResourceExhausted, "LIMIT_REACHED"},
	{events.ErrTooManyWatchers, codes.ResourceExhausted, "TOO_MANY_WATCHERS"},
	{events.ErrSlow, codes.ResourceExhausted, "WATCHER_TOO_SLOW"},
	{events.ErrCompacted, codes.OutOfRange, "SEQUENCE_NOT_HELD"},
	{events.ErrClosed, codes.Unavailable, "SHUTTING_DOWN"},
	{listener.ErrShuttingDown, codes.Unavailable, "SHUTTING_DOWN"},
	{listener.ErrPersist, codes.Internal, "STATE_NOT_SAVED"},
	{ErrUnauthenticated, codes.Unauthenticated, "UNAUTHENTICATED"},
	{ErrRateLimited, codes.ResourceExhausted, "RATE_LIMITED"},
	{ErrBootMismatch, codes.OutOfRange, "BOOT_MISMATCH"},
	{ErrUpgradeFailed, codes.FailedPrecondition, "UPGRADE_FAILED"},
	{ErrUpgradeBusy, codes.Aborted, "UPGRADE_UNDER_WAY"},
}

// Status turns an error wrapping one of the domain's sentinel errors into
// a gRPC status error with its ErrorInfo, for code outside the service
// (the server's interceptors).
func Status(err error) error { return toStatus(slog.Default(), err, nil) }

// toStatus turns a domain error into a gRPC status error. Anything
// unmapped is logged and becomes Internal, never Unknown.
func toStatus(log *slog.Logger, err error, meta map[string]string) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	for _, row := range errorTable {
		if !errors.Is(err, row.err) {
			continue
		}
		st := status.New(row.code, err.Error())
		details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: row.reason, Domain: ErrorDomain, Metadata: meta}}
		var fe *listener.FieldError
		if errors.As(err, &fe) {
			details = append(details, &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
				{Field: fe.Field, Description: fe.Msg},
			}})
		}
		if withDetails, derr := st.WithDetails(details...); derr == nil {
			st = withDetails
		}
		return st.Err()
	}
	log.Error("unmapped error", "err", err)
	return status.Error(codes.Internal, err.Error())
}
