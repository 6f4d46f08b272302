package fleet

import (
	"context"
	"encoding/json"
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
// what the host's daemon reports of it (Status), and host.<host> the
// daemon's heartbeat (Host). A host key has two tokens, the others three
// or more: no pattern of one kind matches a key of another, and SplitKey
// refuses host keys.
const (
	DesiredPrefix = "desired"
	StatusPrefix  = "status"
	HostPrefix    = "host"
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

// HostKey is the key of host's heartbeat.
func HostKey(host string) string { return HostPrefix + "." + host }

// AllHostKeys is the pattern of every host's heartbeat key.
const AllHostKeys = HostPrefix + ".*"

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

// DefaultHeartbeat is how often a daemon writes its host key.
const DefaultHeartbeat = 10 * time.Second

// MissedBeats is how many heartbeat intervals a host key may go
// unwritten before its host is gone.
const MissedBeats = 3

// Host is what a daemon writes, as JSON under its host key, when it
// starts watching the bucket, at every heartbeat, and once more with
// Stopped on a clean shutdown.
type Host struct {
	Boot     string `json:"boot"`     // the daemon's boot id (an upgrade keeps it)
	PID      int    `json:"pid"`      // the daemon's process id
	Interval string `json:"interval"` // its heartbeat, as time.Duration writes it ("10s")
	Version  string `json:"version"`  // the daemon's version
	Stopped  bool   `json:"stopped"`  // written by a clean shutdown: no more heartbeats
	// Updated is the daemon's clock at the write: for people. Liveness
	// goes by the server's time of the write (the entry's Created).
	Updated time.Time `json:"updated"`
}

// A host's liveness, as ctl fleet ls says it.
const (
	HostUp      = "up"      // its key was written within MissedBeats intervals
	HostGone    = "gone"    // not since: killed, its machine lost, or cut off from NATS
	HostStopped = "stopped" // its last write said it shut down cleanly
	HostUnknown = "unknown" // no host key (a daemon older than host keys), or one that does not read
)

// Liveness says whether the host whose key holds value, written at
// written (the server's time of the write), is up at now (a time of the
// same clock: the server's). An interval that does not read, or is not
// positive, is HostUnknown.
func Liveness(value []byte, written, now time.Time) (Host, string) {
	var h Host
	if json.Unmarshal(value, &h) != nil {
		return h, HostUnknown
	}
	if h.Stopped {
		return h, HostStopped
	}
	every, err := time.ParseDuration(h.Interval)
	if err != nil || every <= 0 {
		return h, HostUnknown
	}
	if now.Sub(written) > MissedBeats*every {
		return h, HostGone
	}
	return h, HostUp
}

// OpenBucket returns the bucket, creating it with replicas when it does
// not exist yet.
func OpenBucket(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, Bucket)
	if err == nil || !errors.Is(err, jetstream.ErrBucketNotFound) {
		return kv, err
	}
	kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: Bucket, Replicas: max(replicas, 1), History: 5,
		Description: "listenerd: the fleet's desired listeners (desired.<host>.<name>), their status (status.<host>.<name>) and the hosts' heartbeats (host.<host>)"})
	if errors.Is(err, jetstream.ErrBucketExists) { // created meanwhile, otherwise
		return js.KeyValue(ctx, Bucket)
	}
	return kv, err
}
