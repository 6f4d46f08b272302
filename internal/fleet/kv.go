package fleet

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Bucket is the key-value bucket of the fleet's desired listeners and
// their status.
const Bucket = "LISTENERD_FLEET"

// The bucket's key prefixes: desired.<host>.<listener name> holds a
// listener entry as declare.EncodeEntry writes it, status.<host>.<name>
// what the host's daemon reports of it (Status).
const (
	DesiredPrefix = "desired"
	StatusPrefix  = "status"
)

// BucketSource is the source of the declared listeners the bucket
// gives, in events and logs.
const BucketSource = "nats bucket " + Bucket

// DesiredKey is the key of host's desired listener name.
func DesiredKey(host, name string) string { return DesiredPrefix + "." + host + "." + name }

// StatusKey is the key of the status of host's listener name.
func StatusKey(host, name string) string { return StatusPrefix + "." + host + "." + name }

// HostKeys is the pattern of every key of one kind (DesiredPrefix,
// StatusPrefix) of host; host "*" for every host.
func HostKeys(kind, host string) string { return kind + "." + host + ".>" }

// SplitKey returns a key's kind, host and listener name (which may hold
// dots); ok is false for a key of another shape.
func SplitKey(key string) (kind, host, name string, ok bool) {
	kind, rest, ok1 := strings.Cut(key, ".")
	host, name, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || host == "" || name == "" || (kind != DesiredPrefix && kind != StatusPrefix) {
		return "", "", "", false
	}
	return kind, host, name, true
}

// Status is what a daemon reports of one of its desired listeners, as
// JSON under its status key.
type Status struct {
	// State is the listener's state (listening, failed, closing), or
	// "missing" when it does not exist (its create failed).
	State   string `json:"state"`
	Address string `json:"address,omitempty"` // the address it is bound to
	Error   string `json:"error,omitempty"`   // the last reconcile's or the listener's error
	ID      string `json:"id,omitempty"`
	// Revision is the revision of the desired key the daemon reconciled.
	Revision uint64    `json:"revision"`
	Updated  time.Time `json:"updated"`
}

// same reports whether s and o say the same, their times aside.
func (s Status) same(o Status) bool {
	s.Updated, o.Updated = time.Time{}, time.Time{}
	return s == o
}

// OpenBucket returns the bucket, creating it with replicas when it does
// not exist yet.
func OpenBucket(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, Bucket)
	if err == nil || !errors.Is(err, jetstream.ErrBucketNotFound) {
		return kv, err
	}
	kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: Bucket, Replicas: max(replicas, 1), History: 5,
		Description: "listenerd: the fleet's desired listeners (desired.<host>.<name>) and their status (status.<host>.<name>)"})
	if errors.Is(err, jetstream.ErrBucketExists) { // created meanwhile, otherwise
		return js.KeyValue(ctx, Bucket)
	}
	return kv, err
}
