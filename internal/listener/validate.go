package listener

import (
	"fmt"
	"regexp"
	"unicode/utf8"

	"github.com/listenerd/listenerd/internal/events"
)

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

// ValidateLimits checks limits as a whole: what the engine needs of them,
// whoever built them (the API, a saved record, a test).
func ValidateLimits(lim Limits) error {
	switch {
	case lim.IdleTimeout < 0:
		return Invalid("spec.limits.idle_timeout", "must not be negative")
	case lim.MaxLifetime < 0:
		return Invalid("spec.limits.max_lifetime", "must not be negative")
	case lim.QueueTimeout < 0:
		return Invalid("spec.limits.queue_timeout", "must not be negative")
	case lim.QueueLength < 0 || lim.QueueLength > events.MaxQueueLength:
		return Invalid("spec.limits.queue_length", "%d is out of range 1-%d (0: %d)", lim.QueueLength, events.MaxQueueLength, events.DefaultQueueLength)
	case lim.Overflow > OverflowQueue:
		return Invalid("spec.limits.overflow", "unknown policy %d", lim.Overflow)
	case lim.AcceptRate < 0 || lim.AcceptRate != lim.AcceptRate:
		return Invalid("spec.limits.accept_rate", "%v must be a number, at least 0", lim.AcceptRate)
	case lim.AcceptBurst < 0:
		return Invalid("spec.limits.accept_burst", "must not be negative")
	case lim.PerSource < 0:
		return Invalid("spec.limits.max_connections_per_source", "must not be negative")
	}
	return nil
}

// validateSpec checks what the engine owns of a spec and makes its
// handler from the table; the handler's options are the handler's to
// check.
func (t handlerTable) validateSpec(s Spec) (Handler, error) {
	if s.Backlog < 0 || s.Backlog > MaxBacklog {
		return nil, Invalid("spec.backlog", "%d is out of range 1-%d", s.Backlog, MaxBacklog)
	}
	if err := ValidateLimits(s.Limits); err != nil {
		return nil, err
	}
	if err := validateFaults(s.Faults); err != nil {
		return nil, err
	}
	return t.make(s.Handler)
}
