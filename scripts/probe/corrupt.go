package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// variant is one damaged state file.
type variant struct {
	name string
	make func(valid []byte) []byte // the file's contents
	dir  bool                      // a directory in the file's place
	link bool                      // a symbolic link to nowhere in its place
	skip string                    // why it is not run
}

// mutate decodes the valid file, lets f change it, and encodes it again.
func mutate(f func(top map[string]any, recs []any)) func([]byte) []byte {
	return func(valid []byte) []byte {
		var top map[string]any
		if err := json.Unmarshal(valid, &top); err != nil {
			panic(err)
		}
		recs, _ := top["listeners"].([]any)
		f(top, recs)
		out, err := json.MarshalIndent(top, "", "  ")
		if err != nil {
			panic(err)
		}
		return out
	}
}

// spec returns record i's spec object.
func spec(recs []any, i int) map[string]any {
	return recs[i].(map[string]any)["spec"].(map[string]any)
}

func variants() []variant {
	cut := func(frac float64) func([]byte) []byte {
		return func(v []byte) []byte { return v[:max(1, int(float64(len(v))*frac))] }
	}
	random := func(seed uint64, n int) func([]byte) []byte {
		return func([]byte) []byte {
			r := rand.New(rand.NewPCG(seed, seed))
			b := make([]byte, n)
			for i := range b {
				b[i] = byte(r.UintN(256))
			}
			return b
		}
	}
	vs := []variant{
		{name: "empty", make: func([]byte) []byte { return nil }},
		{name: "truncated to 1 byte", make: func(v []byte) []byte { return v[:1] }},
	}
	for _, f := range []float64{0.05, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9} {
		vs = append(vs, variant{name: fmt.Sprintf("truncated at %.0f%%", f*100), make: cut(f)})
	}
	vs = append(vs,
		variant{name: "truncated: last brace gone", make: func(v []byte) []byte { return bytes.TrimRight(bytes.TrimSpace(v), "}") }},
		variant{name: "random 64 bytes", make: random(1, 64)},
		variant{name: "random 4 KiB", make: random(2, 4096)},
		variant{name: "random 1 MiB", make: random(3, 1<<20)},
		variant{name: "4 KiB of NUL", make: func([]byte) []byte { return make([]byte, 4096) }},
		variant{name: "a byte flipped mid-file", make: func(v []byte) []byte {
			b := bytes.Clone(v)
			b[len(b)/2] ^= 0x55
			return b
		}},
		variant{name: "UTF-8 BOM first", make: func(v []byte) []byte { return append([]byte("\xef\xbb\xbf"), v...) }},
		variant{name: "trailing garbage", make: func(v []byte) []byte { return append(bytes.Clone(v), "}{"...) }},
		variant{name: "version 0", make: mutate(func(t map[string]any, _ []any) { t["version"] = 0 })},
		variant{name: "version 3 (future)", make: mutate(func(t map[string]any, _ []any) { t["version"] = 3 })},
		variant{name: "version -1", make: mutate(func(t map[string]any, _ []any) { t["version"] = -1 })},
		variant{name: "version as a string", make: mutate(func(t map[string]any, _ []any) { t["version"] = "2" })},
		variant{name: "no version field", make: mutate(func(t map[string]any, _ []any) { delete(t, "version") })},
		variant{name: "listeners an object", make: mutate(func(t map[string]any, _ []any) { t["listeners"] = map[string]any{} })},
		variant{name: "unknown top-level field", make: mutate(func(t map[string]any, _ []any) { t["extra"] = true })},
		variant{name: "record: a string", make: mutate(func(_ map[string]any, r []any) { r[1] = "ln-00000001" })},
		variant{name: "record: port 70000", make: mutate(func(_ map[string]any, r []any) { spec(r, 1)["port"] = 70000 })},
		variant{name: "record: id empty", make: mutate(func(_ map[string]any, r []any) { r[1].(map[string]any)["id"] = "" })},
		variant{name: "record: id malformed", make: mutate(func(_ map[string]any, r []any) { r[1].(map[string]any)["id"] = "not an id" })},
		variant{name: "record: duplicate id", make: mutate(func(_ map[string]any, r []any) {
			r[1].(map[string]any)["id"] = r[0].(map[string]any)["id"]
		})},
		variant{name: "record: duplicate name", make: mutate(func(_ map[string]any, r []any) {
			r[1].(map[string]any)["name"] = r[0].(map[string]any)["name"]
		})},
		variant{name: "record: bad name", make: mutate(func(_ map[string]any, r []any) { r[1].(map[string]any)["name"] = "No Spaces!" })},
		variant{name: "record: host not an address", make: mutate(func(_ map[string]any, r []any) { spec(r, 1)["host"] = "bad host!" })},
		variant{name: "record: unknown handler", make: mutate(func(_ map[string]any, r []any) { spec(r, 1)["handler"] = "teleport" })},
		variant{name: "record: bad CIDR", make: mutate(func(_ map[string]any, r []any) { spec(r, 1)["deny_cidrs"] = []string{"10.0.0.0/33"} })},
		variant{name: "record: negative idle timeout", make: mutate(func(_ map[string]any, r []any) { spec(r, 2)["idle_timeout_ns"] = -5 })},
		variant{name: "record: negative max_connections", make: mutate(func(_ map[string]any, r []any) { spec(r, 1)["max_connections"] = -7 })},
		variant{name: "record: forward without upstream", make: mutate(func(_ map[string]any, r []any) { delete(spec(r, 1), "handler_options") })},
		variant{name: "a directory in its place", dir: true},
		variant{name: "a dangling symlink in its place", link: true},
		variant{name: "unreadable (mode 000)", skip: "run as root, mode 000 does not stop a read"},
	)
	if os.Geteuid() != 0 {
		vs[len(vs)-1].skip = ""
	}
	return vs
}

var idRE = regexp.MustCompile(`"id":\s*"(ln-[0-9a-f]{8})"`)

// corrupt is phase 5.
func (p *probe) corrupt(ctx context.Context, r *result) error {
	// A valid file: three listeners of different kinds, saved by the daemon.
	base := p.dir("valid")
	d, err := p.startPersistent(ctx, base)
	if err != nil {
		return err
	}
	for i, s := range []*listenerdv1.ListenerSpec{
		{Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Echo{Echo: &listenerdv1.EchoHandler{}}}},
		{Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Forward{Forward: &listenerdv1.ForwardHandler{Upstream: "127.0.0.1:9"}}},
			Limits: &listenerdv1.Limits{MaxConnections: ptr(uint32(5))}, DenyCidrs: []string{"10.0.0.0/8"}},
		{Limits: &listenerdv1.Limits{IdleTimeout: durationOf(5)}},
	} {
		name := ""
		if i == 0 {
			name = "keep-a"
		}
		if _, err := d.c.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: name, Spec: s}); err != nil {
			return err
		}
	}
	if code, err := d.stop(); code != 0 || err != nil {
		return fmt.Errorf("valid daemon exit %d: %v", code, err)
	}
	valid, err := os.ReadFile(filepath.Join(base, "state", "listeners.json"))
	if err != nil {
		return err
	}
	var refusedN, started, skipped int
	run := func(v variant) {
		dir := p.dir("corrupt")
		state := filepath.Join(dir, "state")
		file := filepath.Join(state, "listeners.json")
		if err := os.MkdirAll(state, 0o700); err != nil {
			r.fail("%s: %v", v.name, err)
			return
		}
		var content []byte
		switch {
		case v.dir:
			err = os.Mkdir(file, 0o700)
		case v.link:
			err = os.Symlink(filepath.Join(dir, "nowhere"), file)
		case v.make == nil: // unreadable
			content = valid
			err = os.WriteFile(file, content, 0)
		default:
			content = v.make(valid)
			err = os.WriteFile(file, content, 0o600)
		}
		if err != nil {
			r.fail("%s: %v", v.name, err)
			return
		}
		d, err := p.startPersistent(ctx, dir)
		var se *startErr
		switch {
		case errors.As(err, &se):
			refusedN++
			msg := firstLine(se.stderr)
			r.note("%-34s refused, exit %d: %s", v.name, se.code, clip(msg, 150))
			if se.code == 0 {
				r.fail("%s: refused with exit code 0", v.name)
			}
			if strings.Contains(se.stderr, "panic") || strings.Contains(se.stderr, "goroutine ") {
				r.fail("%s: the daemon panicked: %s", v.name, clip(se.stderr, 300))
			}
			if !strings.Contains(se.stderr, state) {
				r.fail("%s: the message does not name the state file or directory: %s", v.name, msg)
			}
			// The file is left as it was, for the user to look at.
			fi, err := os.Lstat(file)
			switch {
			case err != nil:
				r.fail("%s: after the refusal the file is gone: %v", v.name, err)
			case v.dir && !fi.IsDir(), v.link && fi.Mode()&os.ModeSymlink == 0:
				r.fail("%s: after the refusal the path changed (%v)", v.name, fi.Mode())
			case !v.dir && !v.link:
				if got, _ := os.ReadFile(file); !bytes.Equal(got, content) {
					r.fail("%s: after the refusal the file changed", v.name)
				}
			}
		case err != nil:
			r.fail("%s: %v", v.name, err)
		default:
			started++
			listed, lerr := list(ctx, d)
			var failed []string
			for _, l := range listed {
				if l.GetStatus().GetState() == listenerdv1.State_STATE_FAILED {
					failed = append(failed, l.GetId()+": "+l.GetStatus().GetLastError())
				}
			}
			r.note("%-34s started: %d listeners, %d FAILED %s", v.name, len(listed), len(failed), clip(strings.Join(failed, "; "), 150))
			if lerr != nil {
				r.fail("%s: list: %v", v.name, lerr)
			}
			// Every record the file held is back, FAILED if it must be:
			// none dropped in silence.
			for _, m := range idRE.FindAllSubmatch(content, -1) {
				if _, ok := listed[string(m[1])]; !ok {
					r.fail("%s: %s in the file is not restored", v.name, m[1])
				}
			}
			code, err := d.stop()
			if code != 0 || err != nil {
				r.fail("%s: exit %d on SIGTERM: %v", v.name, code, err)
			}
			if d.panics() > 0 {
				r.fail("%s: the daemon's stderr tells of a panic: %s", v.name, clip(d.stderr.String(), 300))
			}
		}
	}
	// The valid file itself, first: it must start with all three back.
	run(variant{name: "(control) the valid file", make: func(v []byte) []byte { return v }})
	vs := variants()
	n := 0
	for _, v := range vs {
		if v.skip != "" {
			skipped++
			r.note("%-34s skipped: %s", v.name, v.skip)
			continue
		}
		if ctx.Err() != nil {
			break
		}
		n++
		run(v)
	}
	r.count("variants", n)
	r.count("refused", refusedN)
	r.count("started", started-1)
	r.count("skipped", skipped)
	return nil
}

func firstLine(s string) string {
	for l := range strings.SplitSeq(strings.TrimSpace(s), "\n") {
		if strings.TrimSpace(l) != "" {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

func clip(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " | ")
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
