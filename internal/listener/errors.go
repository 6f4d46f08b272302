package listener

import (
	"errors"
	"fmt"
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
