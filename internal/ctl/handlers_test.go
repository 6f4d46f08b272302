package ctl

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/durationpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// Every mode of the table goes round: its flags build a Handler that ls
// and get name with the same word, and --help and completion offer it.
func TestHandlerModesRoundTrip(t *testing.T) {
	if len(handlerModes) < 3 {
		t.Fatalf("%d modes", len(handlerModes))
	}
	help := runCtl(t, "/nonexistent.sock", "listen", "--help").stdout
	// A value for each mode's flag.
	values := map[string]string{"upstream": "127.0.0.1:80", "claim-timeout": "1s"}
	for _, m := range handlerModes {
		args := []string{"--mode", strings.ToUpper(m.word)}
		for _, f := range m.flags {
			v, ok := values[f.name]
			if !ok {
				t.Fatalf("no test value for --%s", f.name)
			}
			args = append(args, "--"+f.name, v)
		}
		req, err := parseListen(t, args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		h := req.GetSpec().GetHandler()
		if h == nil || !m.is(h) {
			t.Fatalf("%v built %v", args, h)
		}
		if got := modeWord(h); got != m.word {
			t.Errorf("modeWord(%v) = %q, want %q", h, got, m.word)
		}
		for _, other := range handlerModes {
			if other.word != m.word && other.is(h) {
				t.Errorf("%s's handler is a %s too", m.word, other.word)
			}
		}
		if !strings.Contains(help, m.word+"  ") || !strings.Contains(help, m.help) {
			t.Errorf("listen --help does not list %s: %s", m.word, help)
		}
	}
	if !strings.Contains(help, "discard  read and count the bytes, send nothing (the default)\n") ||
		!strings.Contains(help, "what to do with connections: discard, echo, forward or stream (default discard, or forward with --upstream, or stream with --claim-timeout)") ||
		!strings.Contains(help, "HOST:PORT to forward connections to (implies --mode forward)") {
		t.Errorf("listen --help:\n%s", help)
	}
	var words []string
	for _, c := range modeChoices().completions() {
		words = append(words, strings.SplitN(c, "\t", 2)[0])
		if !strings.Contains(c, "\t") {
			t.Errorf("completion %q has no description", c)
		}
	}
	if got := strings.Join(words, " "); got != "discard echo forward stream" {
		t.Errorf("completion words %q", got)
	}
}

func TestModeWordAndLine(t *testing.T) {
	forward := &listenerdv1.Handler{Kind: &listenerdv1.Handler_Forward{Forward: &listenerdv1.ForwardHandler{Upstream: "db:5432"}}}
	echo := &listenerdv1.Handler{Kind: &listenerdv1.Handler_Echo{Echo: &listenerdv1.EchoHandler{}}}
	// A kind ctl does not know, from a newer daemon: an unknown field.
	newer := &listenerdv1.Handler{}
	newer.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
	for _, tt := range []struct {
		h          *listenerdv1.Handler
		word, line string
	}{
		{nil, "discard", "discard"},
		{&listenerdv1.Handler{}, "discard", "discard"},
		{echo, "echo", "echo"},
		{forward, "forward", "forward to db:5432"},
		{newer, "unknown", "unknown"},
	} {
		if got := modeWord(tt.h); got != tt.word {
			t.Errorf("modeWord(%v) = %q, want %q", tt.h, got, tt.word)
		}
		if got := modeLine(tt.h); got != tt.line {
			t.Errorf("modeLine(%v) = %q, want %q", tt.h, got, tt.line)
		}
	}
	a := newApp(nil, nil)
	var b strings.Builder
	if err := a.writeListener(&b, &listenerdv1.Listener{Id: "ln-1", Spec: &listenerdv1.ListenerSpec{Handler: forward}}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "mode:             forward to db:5432\n") {
		t.Errorf("get:\n%s", b.String())
	}
}

func TestHandlerFlagErrors(t *testing.T) {
	for args, want := range map[string]string{
		"--mode bounce":                      `unknown --mode "bounce" (want discard, echo, forward or stream)`,
		"--mode forward":                     "--mode forward needs --upstream HOST:PORT",
		"--mode echo --upstream 127.0.0.1:1": `--upstream needs --mode forward, not "echo"`,
		"--upstream=":                        "--mode forward needs --upstream HOST:PORT",
		"--claim-timeout soon":               `invalid value "soon" for --claim-timeout: want a duration such as 500ms, 10s or 2m`,
		"--claim-timeout=-1s":                `invalid value "-1s" for --claim-timeout: want a duration such as 500ms, 10s or 2m`,
		"--claim-timeout=":                   `invalid value "" for --claim-timeout: want a duration such as 500ms, 10s or 2m`,
		"--mode echo --claim-timeout 1s":     `--claim-timeout needs --mode stream, not "echo"`,
		"--upstream h:1 --claim-timeout 1s":  "--upstream and --claim-timeout belong to different modes",
	} {
		_, err := parseListen(t, strings.Fields(args)...)
		assertUsage(t, err)
		if err.Error() != want {
			t.Errorf("%s: %q, want %q", args, err, want)
		}
	}
}

// --mode stream, alone or implied by --claim-timeout, and how get shows it.
func TestStreamMode(t *testing.T) {
	for args, want := range map[string]*listenerdv1.StreamHandler{
		"--mode stream":                       {},
		"--claim-timeout 200ms":               {ClaimTimeout: durationpb.New(200 * time.Millisecond)},
		"--mode stream --claim-timeout 0s":    {ClaimTimeout: durationpb.New(0)},
		"--mode=Stream --claim-timeout=1m30s": {ClaimTimeout: durationpb.New(90 * time.Second)},
	} {
		req, err := parseListen(t, strings.Fields(args)...)
		if err != nil {
			t.Fatalf("%s: %v", args, err)
		}
		assertProto(t, req.GetSpec().GetHandler(), &listenerdv1.Handler{Kind: &listenerdv1.Handler_Stream{Stream: want}})
	}
	for h, line := range map[*listenerdv1.StreamHandler]string{
		{}: "stream",
		{ClaimTimeout: durationpb.New(200 * time.Millisecond)}: "stream (claim timeout 200ms)",
	} {
		if got := modeLine(&listenerdv1.Handler{Kind: &listenerdv1.Handler_Stream{Stream: h}}); got != line {
			t.Errorf("modeLine = %q, want %q", got, line)
		}
	}
}
