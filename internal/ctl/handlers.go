package ctl

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// handlerMode is one --mode of ctl listen: all that ctl knows of a handler.
// Adding a handler to ctl is adding one to handlerModes.
type handlerMode struct {
	// word is the --mode word, and the handler's name in ls and get.
	word string
	// help is one line for ctl listen --help and the completion of --mode.
	help string
	// flags are the string flags of this mode alone (forward's --upstream);
	// giving one implies the mode.
	flags []modeFlag
	// build makes the Handler from the values of the mode's flags given,
	// by name; an error is a usage error.
	build func(vals map[string]string) (*listenerdv1.Handler, error)
	// is recognises a Handler of this mode.
	is func(*listenerdv1.Handler) bool
	// detail, when set, is what ctl get shows after the word ("" for
	// nothing).
	detail func(*listenerdv1.Handler) string
}

// modeFlag is a flag of one mode, and the field of the mode's handler
// message it sets.
type modeFlag struct {
	name, usage, field string
}

// handlerModes are ctl's handlers; the first is the daemon's default, the
// one a listener without a handler has.
var handlerModes = []handlerMode{
	{
		word: "discard",
		help: "read and count the bytes, send nothing",
		build: func(map[string]string) (*listenerdv1.Handler, error) {
			return &listenerdv1.Handler{Kind: &listenerdv1.Handler_Discard{Discard: &listenerdv1.DiscardHandler{}}}, nil
		},
		is: func(h *listenerdv1.Handler) bool { return h.GetDiscard() != nil },
	},
	{
		word: "echo",
		help: "write every byte back",
		build: func(map[string]string) (*listenerdv1.Handler, error) {
			return &listenerdv1.Handler{Kind: &listenerdv1.Handler_Echo{Echo: &listenerdv1.EchoHandler{}}}, nil
		},
		is: func(h *listenerdv1.Handler) bool { return h.GetEcho() != nil },
	},
	{
		word:  "forward",
		help:  "proxy each connection to --upstream HOST:PORT",
		flags: []modeFlag{{"upstream", "HOST:PORT to forward connections to", "upstream"}},
		build: func(vals map[string]string) (*listenerdv1.Handler, error) {
			if vals["upstream"] == "" {
				return nil, usageErrorf("--mode forward needs --upstream HOST:PORT")
			}
			return &listenerdv1.Handler{Kind: &listenerdv1.Handler_Forward{Forward: &listenerdv1.ForwardHandler{Upstream: vals["upstream"]}}}, nil
		},
		is:     func(h *listenerdv1.Handler) bool { return h.GetForward() != nil },
		detail: func(h *listenerdv1.Handler) string { return "to " + h.GetForward().GetUpstream() },
	},
	{
		word: "stream",
		help: "hand each connection to a program attached with ctl serve, ctl attach or the API",
		flags: []modeFlag{{"claim-timeout", "the `time` a connection waits, unread, for an attached program to take it, " +
			"before it closes no_handler or claim_timeout (default: the daemon's, 10s)", "claim_timeout"}},
		build: func(vals map[string]string) (*listenerdv1.Handler, error) {
			sh := &listenerdv1.StreamHandler{}
			if v, ok := vals["claim-timeout"]; ok {
				d, err := time.ParseDuration(strings.TrimSpace(v))
				if err != nil || d < 0 {
					return nil, usageErrorf("invalid value %q for --claim-timeout: want a duration such as 500ms, 10s or 2m", v)
				}
				sh.ClaimTimeout = durationpb.New(d)
			}
			return &listenerdv1.Handler{Kind: &listenerdv1.Handler_Stream{Stream: sh}}, nil
		},
		is: func(h *listenerdv1.Handler) bool { return h.GetStream() != nil },
		detail: func(h *listenerdv1.Handler) string {
			if ct := h.GetStream().GetClaimTimeout(); ct != nil {
				return "(claim timeout " + humanDuration(ct.AsDuration()) + ")"
			}
			return ""
		},
	},
}

// modeOf is the mode of h: the default for no handler (or one of no kind),
// nil for a kind ctl does not know (from a newer daemon).
func modeOf(h *listenerdv1.Handler) *handlerMode {
	for i := range handlerModes {
		if handlerModes[i].is(h) {
			return &handlerModes[i]
		}
	}
	if h == nil || (h.Kind == nil && len(h.ProtoReflect().GetUnknown()) == 0) {
		return &handlerModes[0]
	}
	return nil
}

// modeWord names h's handler in ls: discard, echo, forward.
func modeWord(h *listenerdv1.Handler) string {
	if m := modeOf(h); m != nil {
		return m.word
	}
	return "unknown"
}

// modeLine is the mode line of ctl get: the word and its detail
// ("forward to 127.0.0.1:80").
func modeLine(h *listenerdv1.Handler) string {
	m := modeOf(h)
	if m == nil || m.detail == nil || m.detail(h) == "" {
		return modeWord(h)
	}
	return m.word + " " + m.detail(h)
}

// modeChoices are the --mode words with their help, the default first.
func modeChoices() choices {
	cs := make(choices, len(handlerModes))
	for i, m := range handlerModes {
		cs[i] = choice{m.word, m.help}
	}
	return cs
}

// handlerFlags are --mode and the modes' own flags, for ctl listen.
type handlerFlags struct {
	mode string
	vals map[string]*string // the values of the modes' flags, by name
}

func (f *handlerFlags) addFlags(fs *pflag.FlagSet) {
	def := "default " + handlerModes[0].word
	f.vals = make(map[string]*string)
	for _, m := range handlerModes {
		for _, mf := range m.flags {
			f.vals[mf.name] = fs.String(mf.name, "", fmt.Sprintf("%s (implies --mode %s)", mf.usage, m.word))
			annotateField(fs, mf.name, "spec.handler."+m.word+"."+mf.field)
			def += fmt.Sprintf(", or %s with --%s", m.word, mf.name)
		}
	}
	fs.StringVar(&f.mode, "mode", "", "what to do with connections: "+orList(modeChoices().words())+" ("+def+")")
	annotateField(fs, "mode", "spec.handler")
}

// handler turns --mode and the modes' flags given in fs into a Handler;
// nil leaves the daemon's default.
func (f *handlerFlags) handler(fs *pflag.FlagSet) (*listenerdv1.Handler, error) {
	word := strings.ToLower(strings.TrimSpace(f.mode))
	implied := ""
	for _, m := range handlerModes {
		for _, mf := range m.flags {
			if !fs.Changed(mf.name) {
				continue
			}
			switch {
			case word == "":
				word, implied = m.word, mf.name
			case word != m.word && implied != "":
				return nil, usageErrorf("--%s and --%s belong to different modes", implied, mf.name)
			case word != m.word:
				return nil, usageErrorf("--%s needs --mode %s, not %q", mf.name, m.word, f.mode)
			}
		}
	}
	if word == "" {
		return nil, nil
	}
	for _, m := range handlerModes {
		if m.word != word {
			continue
		}
		vals := make(map[string]string, len(m.flags))
		for _, mf := range m.flags {
			if fs.Changed(mf.name) {
				vals[mf.name] = *f.vals[mf.name]
			}
		}
		return m.build(vals)
	}
	return nil, usageErrorf("unknown --mode %q (want %s)", f.mode, orList(modeChoices().words()))
}
