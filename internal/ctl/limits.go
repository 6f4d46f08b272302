package ctl

import (
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
	idleTimeout  time.Duration
	maxLifetime  time.Duration
	acceptRate   float64
	acceptBurst  uint32
	maxPerSource uint32
}

func (f *limitFlags) addFlags(fs *pflag.FlagSet) {
	fs.Uint32Var(&f.maxConns, "max-connections", 0, "most open connections; 0 rejects every new connection (default: unlimited)")
	fs.StringVar(&f.overflow, "overflow", "", "what happens to a connection over --max-connections: "+overflowWords()+" (default "+overflowWord(0)+")")
	fs.DurationVar(&f.idleTimeout, "idle-timeout", 0, "close connections that move no bytes for this long; 0 means never (default)")
	fs.DurationVar(&f.maxLifetime, "max-lifetime", 0, "close connections this long after they open; 0 means never (default)")
	fs.Float64Var(&f.acceptRate, "accept-rate", 0, "most connections accepted a second (token bucket); over it a connection is rejected; 0 means no limit (default)")
	fs.Uint32Var(&f.acceptBurst, "accept-burst", 0, "burst of --accept-rate; 0 means the rate, at least 1 (default)")
	fs.Uint32Var(&f.maxPerSource, "max-per-source", 0, "most open connections from one source address; 0 means no limit (default)")
}

// limitSetter is one limit flag: the Limits field it sets and the update
// mask path that names that field.
type limitSetter struct {
	flag string
	path string
	set  func(f *limitFlags, l *listenerdv1.Limits) error
}

// limitSetters are the limit flags in the order of their fields.
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
	{"idle-timeout", "spec.limits.idle_timeout", func(f *limitFlags, l *listenerdv1.Limits) error {
		l.IdleTimeout = durationpb.New(f.idleTimeout)
		return nil
	}},
	{"max-lifetime", "spec.limits.max_lifetime", func(f *limitFlags, l *listenerdv1.Limits) error {
		l.MaxLifetime = durationpb.New(f.maxLifetime)
		return nil
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
// leaves its field unset.
func (f *limitFlags) limits(fs *pflag.FlagSet) (*listenerdv1.Limits, []string, error) {
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
	return l, paths, nil
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
	{listenerdv1.OverflowPolicy_OVERFLOW_POLICY_REJECT, "accept and close at once, with a rejected event (Node's way)"},
	{listenerdv1.OverflowPolicy_OVERFLOW_POLICY_BACKLOG, "stop accepting while at the limit: excess connections wait unseen in the kernel's queue"},
}

// overflowWordList is the --overflow words, the default first.
func overflowWordList() []string {
	words := make([]string, len(overflowPolicies))
	for i, p := range overflowPolicies {
		words[i] = overflowWord(p.policy)
	}
	return words
}

// overflowWords lists the --overflow words for people: "reject or backlog".
func overflowWords() string { return orList(overflowWordList()) }

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
