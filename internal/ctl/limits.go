package ctl

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// limitFlags are the limit flags of ctl listen and ctl limit: both register
// them with addFlags, and build the Limits from the ones given with limits.
type limitFlags struct {
	maxConns     uint32
	overflow     string
	queueLength  uint32
	queueTimeout time.Duration
	idleTimeout  time.Duration
	maxLifetime  time.Duration
	acceptRate   float64
	acceptBurst  uint32
	maxPerSource uint32
}

func (f *limitFlags) addFlags(fs *pflag.FlagSet) {
	fs.Uint32Var(&f.maxConns, "max-connections", 0, "most open connections; 0 rejects every new connection (default: unlimited)")
	fs.StringVar(&f.overflow, "overflow", "", "what happens to a connection over --max-connections: "+overflowWords()+" (default "+overflowWord(0)+")")
	fs.Uint32Var(&f.queueLength, "queue-length", 0, fmt.Sprintf("with --overflow queue: most connections waiting, 1-%d; 0 means %d (default)", maxQueueLength, defaultQueueLength))
	fs.DurationVar(&f.queueTimeout, "queue-timeout", 0, "with --overflow queue: longest a connection waits before it is rejected; 0 means no limit (default)")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", 0, "close connections that move no bytes for this long; 0 means never (default)")
	fs.DurationVar(&f.maxLifetime, "max-lifetime", 0, "close connections this long after they open; 0 means never (default)")
	fs.Float64Var(&f.acceptRate, "accept-rate", 0, "most connections accepted a second (token bucket); over it a connection is rejected; 0 means no limit (default)")
	fs.Uint32Var(&f.acceptBurst, "accept-burst", 0, "burst of --accept-rate; 0 means the rate, at least 1 (default)")
	fs.Uint32Var(&f.maxPerSource, "max-per-source", 0, "most open connections from one source address; 0 means no limit (default)")
	for _, s := range limitSetters {
		annotateField(fs, s.flag, s.path)
	}
}

// limitSetter is one limit flag: the Limits field it sets and the update
// mask path that names that field.
type limitSetter struct {
	flag string
	path string
	set  func(f *limitFlags, l *listenerdv1.Limits) error
}

// limitSetters are the limit flags in the order ctl shows the limits.
var limitSetters = []limitSetter{
	{"max-connections", "spec.limits.max_connections", func(f *limitFlags, l *listenerdv1.Limits) error {
		l.MaxConnections = new(f.maxConns)
		return nil
	}},
	{"overflow", "spec.limits.overflow", func(f *limitFlags, l *listenerdv1.Limits) error {
		p, err := parseOverflow(f.overflow)
		l.Overflow = p
		return err
	}},
	{"queue-length", "spec.limits.queue_length", func(f *limitFlags, l *listenerdv1.Limits) error {
		if f.queueLength > maxQueueLength {
			return usageErrorf("--queue-length must be 1-%d (0 means the default, %d)", maxQueueLength, defaultQueueLength)
		}
		l.QueueLength = f.queueLength
		return nil
	}},
	{"queue-timeout", "spec.limits.queue_timeout", func(f *limitFlags, l *listenerdv1.Limits) error {
		l.QueueTimeout = durationpb.New(f.queueTimeout)
		return nonNegative("queue-timeout", f.queueTimeout, "no limit")
	}},
	{"idle-timeout", "spec.limits.idle_timeout", func(f *limitFlags, l *listenerdv1.Limits) error {
		l.IdleTimeout = durationpb.New(f.idleTimeout)
		return nonNegative("idle-timeout", f.idleTimeout, "never")
	}},
	{"max-lifetime", "spec.limits.max_lifetime", func(f *limitFlags, l *listenerdv1.Limits) error {
		l.MaxLifetime = durationpb.New(f.maxLifetime)
		return nonNegative("max-lifetime", f.maxLifetime, "never")
	}},
	{"accept-rate", "spec.limits.accept_rate", func(f *limitFlags, l *listenerdv1.Limits) error {
		if f.acceptRate < 0 {
			return usageErrorf("--accept-rate must not be negative (0 means no limit)")
		}
		l.AcceptRate = f.acceptRate
		return nil
	}},
	{"accept-burst", "spec.limits.accept_burst", func(f *limitFlags, l *listenerdv1.Limits) error {
		l.AcceptBurst = f.acceptBurst
		return nil
	}},
	{"max-per-source", "spec.limits.max_connections_per_source", func(f *limitFlags, l *listenerdv1.Limits) error {
		if f.maxPerSource > 0 { // 0 leaves it unset: no limit
			l.MaxConnectionsPerSource = new(f.maxPerSource)
		}
		return nil
	}},
}

// limits builds the Limits from the flags given in fs, and the update mask
// paths of those flags, in the order of limitSetters. A flag not given
// leaves its field unset. The queue's flags need --overflow queue, given
// with them when creating is set (ctl listen); ctl limit may set them alone
// for a listener that queues already.
func (f *limitFlags) limits(fs *pflag.FlagSet, creating bool) (*listenerdv1.Limits, []string, error) {
	l := &listenerdv1.Limits{}
	var paths []string
	for _, s := range limitSetters {
		if !fs.Changed(s.flag) {
			continue
		}
		if err := s.set(f, l); err != nil {
			return nil, nil, err
		}
		paths = append(paths, s.path)
	}
	queuing := l.GetOverflow() == listenerdv1.OverflowPolicy_OVERFLOW_POLICY_QUEUE
	for _, name := range []string{"queue-length", "queue-timeout"} {
		switch {
		case !fs.Changed(name) || queuing:
		case fs.Changed("overflow"):
			return nil, nil, usageErrorf("--%s needs --overflow queue, not %s", name, overflowWord(l.GetOverflow()))
		case creating:
			return nil, nil, usageErrorf("--%s needs --overflow queue", name)
		}
	}
	return l, paths, nil
}

// nonNegative refuses a negative duration given to flag; zero means what
// zero says.
func nonNegative(flag string, d time.Duration, zero string) error {
	if d < 0 {
		return usageErrorf("--%s must not be negative (0 means %s)", flag, zero)
	}
	return nil
}

// limitFlagNames lists the limit flags for a message: "--a, --b or --c".
func limitFlagNames() string {
	names := make([]string, len(limitSetters))
	for i, s := range limitSetters {
		names[i] = "--" + s.flag
	}
	return orList(names)
}

// orList joins words as "a, b or c".
func orList(words []string) string {
	if len(words) < 2 {
		return strings.Join(words, "")
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

// overflowPolicy is one word of --overflow.
type overflowPolicy struct {
	policy listenerdv1.OverflowPolicy
	help   string
}

// overflowPolicies are the words of --overflow, the default first; each
// word is the policy's enum name in lower case (overflowWord).
var overflowPolicies = []overflowPolicy{
	{listenerdv1.OverflowPolicy_OVERFLOW_POLICY_REJECT, "accept and close at once, with a rejected event, as Node does"},
	{listenerdv1.OverflowPolicy_OVERFLOW_POLICY_BACKLOG, "stop accepting while at the limit; the excess waits unseen in the kernel"},
	{listenerdv1.OverflowPolicy_OVERFLOW_POLICY_QUEUE, "accept the excess and hold it, unread and listed, in a queue served in order"},
}

// The queue's length: the daemon's default and the most it takes.
const (
	defaultQueueLength = 128
	maxQueueLength     = 65535
)

// overflowChoices are the --overflow words with their help, the default
// first.
func overflowChoices() choices {
	cs := make(choices, len(overflowPolicies))
	for i, p := range overflowPolicies {
		cs[i] = choice{overflowWord(p.policy), p.help}
	}
	return cs
}

// overflowWords lists the --overflow words for people: "reject, backlog
// or queue".
func overflowWords() string { return orList(overflowChoices().words()) }

// parseOverflow reads an --overflow word (or the enum's name).
func parseOverflow(s string) (listenerdv1.OverflowPolicy, error) {
	w := strings.ToLower(strings.TrimSpace(s))
	w = strings.TrimPrefix(w, "overflow_policy_")
	for _, p := range overflowPolicies {
		if overflowWord(p.policy) == w {
			return p.policy, nil
		}
	}
	return 0, usageErrorf("unknown --overflow %q (want %s)", s, overflowWords())
}
