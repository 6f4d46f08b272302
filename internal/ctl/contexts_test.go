package ctl

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/listenerd/listenerd/internal/testkit"
)

// ctlIn runs ctl with args and no --socket, so that the contexts file
// (LISTENERD_CTL_CONFIG, set by the caller) decides where it goes.
func ctlIn(t *testing.T, args ...string) result {
	t.Helper()
	var stdout, stderr testkit.Buffer
	a := newApp(&stdout, &stderr)
	a.retry = fastRetry
	a.stdin = strings.NewReader("")
	code := a.run(context.Background(), args)
	return result{stdout.String(), stderr.String(), code}
}

func mustCtl(t *testing.T, args ...string) string {
	t.Helper()
	r := ctlIn(t, args...)
	if r.code != ExitOK {
		t.Fatalf("ctl %q: exit %d, stderr %q", args, r.code, r.stderr)
	}
	return r.stdout
}

func TestContextsFileErrors(t *testing.T) {
	for _, tt := range []struct {
		name, file string
		want       []string
	}{
		{"unknown key", "contexts:\n  web:\n    sockett: /s\n", []string{"F:3:5", `context "web"`, `unknown key "sockett"`, "token-file"}},
		{"inline secret", "contexts:\n  web:\n    api: h:1\n    token: s3cret\n", []string{"F:4:5", `context "web"`, `key "token"`, "no secrets", "token-file"}},
		{"nats secret", "contexts:\n  web:\n    nats-token: s3cret\n", []string{`key "nats-token"`, "nats-token-file"}},
		{"list", "contexts:\n  web:\n    socket: [a, b]\n", []string{`context "web"`, `key "socket"`, "not a list"}},
		{"nested", "contexts:\n  web:\n    socket:\n      x: 1\n", []string{`context "web"`, "socket", "mapping"}},
		{"bool", "contexts:\n  web:\n    tls: yes please\n", []string{`key "tls"`, "true or false"}},
		{"empty value", "contexts:\n  web:\n    socket: \"\"\n", []string{`key "socket"`, "empty"}},
		{"duplicate context", "contexts:\n  web: {}\n  web: {}\n", []string{"F:3", `"web" already defined`}},
		{"duplicate key", "contexts:\n  web:\n    socket: /a\n    socket: /b\n", []string{"F:4", `"socket" already defined`}},
		{"bad name", "contexts:\n  -web: {}\n", []string{"F:2", "bad context name"}},
		{"unknown top key", "current: web\n", []string{"F:1:1", `unknown key "current"`}},
		{"contexts a list", "contexts:\n  - web\n", []string{"contexts", "not a list"}},
		{"missing current", "current-context: db\ncontexts:\n  web: {}\n", []string{"F", `current-context "db"`, "no such context"}},
		{"anchor", "contexts:\n  web: &a\n    socket: /a\n  db: *a\n", []string{"F:"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "F")
			if err := os.WriteFile(path, []byte(tt.file), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := loadContexts(path)
			if err == nil {
				t.Fatalf("no error for %q", tt.file)
			}
			msg := strings.ReplaceAll(err.Error(), path, "F")
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not say %q", msg, w)
				}
			}
		})
	}
}

func TestContextsFileRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sub")
	path := filepath.Join(dir, "ctl.yaml")
	// A missing file is an empty one.
	c, err := loadContexts(path)
	if err != nil || len(c.contexts) != 0 || c.current != "" {
		t.Fatalf("missing file: %+v, %v", c, err)
	}
	c.contexts["web"] = map[string]string{"api": "web.example:7443", "tls": "true", "ca": "/etc/ca: the one.pem", "token-file": "/t", "nats": "tls://n:4222"}
	c.contexts["local"] = map[string]string{"socket": "/run/listenerd/listenerd.sock"}
	c.current = "web"
	if err := c.save(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	if err := c.save(); err != nil { // over an existing file
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Errorf("directory holds %v (%v), want ctl.yaml only: no temporary file left", entries, err)
	}
	got, err := loadContexts(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.current != "web" || len(got.contexts) != 2 {
		t.Fatalf("read back %+v", got)
	}
	for name, want := range c.contexts {
		for k, v := range want {
			if got.contexts[name][k] != v {
				t.Errorf("context %q key %q = %q, want %q", name, k, got.contexts[name][k], v)
			}
		}
	}
}

func TestConfigCommands(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.yaml")
	t.Setenv(CtlConfigEnv, path)

	mustCtl(t, "config", "set-context", "web", "--api", "web.example:7443", "--ca", "/ca.pem", "--token-file", "/t")
	mustCtl(t, "config", "set-context", "local", "--socket", "/s.sock")
	if r := ctlIn(t, "config", "current-context"); r.code != ExitNotFound || !strings.Contains(r.stderr, path) {
		t.Errorf("current-context with none: exit %d, stderr %q", r.code, r.stderr)
	}
	mustCtl(t, "config", "use-context", "web")
	if got := mustCtl(t, "config", "current-context"); got != "web\n" {
		t.Errorf("current-context = %q", got)
	}
	table := mustCtl(t, "config", "get-contexts")
	want := "CURRENT  NAME   DAEMON            NATS\n" +
		"         local  /s.sock           -\n" +
		"*        web    web.example:7443  -\n"
	if table != want {
		t.Errorf("get-contexts:\n%s\nwant:\n%s", table, want)
	}
	var doc struct {
		File     string `json:"file"`
		Current  string `json:"currentContext"`
		Contexts []struct {
			Name     string            `json:"name"`
			Current  bool              `json:"current"`
			Settings map[string]string `json:"settings"`
		} `json:"contexts"`
	}
	if err := json.Unmarshal([]byte(mustCtl(t, "config", "get-contexts", "-o", "json")), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.File != path || doc.Current != "web" || len(doc.Contexts) != 2 || !doc.Contexts[1].Current || doc.Contexts[1].Settings["token-file"] != "/t" {
		t.Errorf("get-contexts -o json = %+v", doc)
	}

	// Update keeps what is not given; --socket replaces the TCP API keys;
	// --unset removes one.
	mustCtl(t, "config", "set-context", "web", "--nats", "nats://127.0.0.1:4222")
	c, _ := loadContexts(path)
	if s := c.contexts["web"]; s["api"] != "web.example:7443" || s["nats"] != "nats://127.0.0.1:4222" {
		t.Errorf("after update: %v", s)
	}
	mustCtl(t, "config", "set-context", "web", "--socket", "/w.sock", "--unset", "nats")
	c, _ = loadContexts(path)
	if s := c.contexts["web"]; len(s) != 1 || s["socket"] != "/w.sock" {
		t.Errorf("after --socket and --unset nats: %v", s)
	}

	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"config", "use-context", "nope"}, ExitNotFound, `context "nope": no such context in ` + path},
		{[]string{"config", "delete-context", "nope"}, ExitNotFound, `"nope"`},
		{[]string{"config", "set-context", "-x"}, ExitUsage, ""},
		{[]string{"config", "set-context", "a b", "--socket", "/s"}, ExitUsage, "bad context name"},
		{[]string{"config", "set-context", "web"}, ExitUsage, "nothing to change"},
		{[]string{"config", "set-context", "web", "--unset", "token"}, ExitUsage, `--unset "token"`},
		{[]string{"config", "set-context", "x", "--socket", "/s", "--api", "h:1"}, ExitUsage, "not both"},
		{[]string{"--context", "nope", "ls"}, ExitUsage, `--context "nope": no such context in ` + path},
	} {
		r := ctlIn(t, tt.args...)
		if r.code != tt.code || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("ctl %q: exit %d, stderr %q; want exit %d saying %q", tt.args, r.code, r.stderr, tt.code, tt.want)
		}
	}

	mustCtl(t, "config", "delete-context", "web")
	if r := ctlIn(t, "config", "current-context"); r.code != ExitNotFound {
		t.Errorf("the current context deleted: current-context exit %d", r.code)
	}
	// A broken file stops every command, with an error naming it...
	if err := os.WriteFile(path, []byte("contexts:\n  web:\n    token: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := ctlIn(t, "ls"); r.code != ExitUsage || !strings.Contains(r.stderr, path+":3:5") {
		t.Errorf("broken file: exit %d, stderr %q", r.code, r.stderr)
	}
	// ... but the completion script, which asks no daemon.
	if r := ctlIn(t, "completion", "bash"); r.code != ExitOK || !strings.Contains(r.stdout, "bash completion") {
		t.Errorf("completion bash beside a broken file: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestContextsTwoDaemons drives ctl against two real daemons on two
// sockets, choosing one with use-context, --context, the flag and the
// environment, in that order of precedence.
func TestContextsTwoDaemons(t *testing.T) {
	da, db := startDaemon(t), startDaemon(t)
	path := filepath.Join(t.TempDir(), "ctl.yaml")
	t.Setenv(CtlConfigEnv, path)
	t.Setenv("LISTENERD_SOCKET", "")
	for _, d := range []struct{ name, sock string }{{"a", da.sock}, {"b", db.sock}} {
		if r := runCtl(t, d.sock, "listen", "--name", "on-"+d.name); r.code != ExitOK {
			t.Fatalf("listen on %s: exit %d, %q", d.name, r.code, r.stderr)
		}
		mustCtl(t, "config", "set-context", d.name, "--socket", d.sock)
	}
	// which says which daemon ctl ls reached.
	which := func(args ...string) string {
		t.Helper()
		out := mustCtl(t, append(args, "ls", "-o", "json")...)
		switch {
		case strings.Contains(out, `"on-a"`) && !strings.Contains(out, `"on-b"`):
			return "a"
		case strings.Contains(out, `"on-b"`) && !strings.Contains(out, `"on-a"`):
			return "b"
		}
		t.Fatalf("ctl ls: %s", out)
		return ""
	}

	mustCtl(t, "config", "use-context", "a")
	if got := which(); got != "a" {
		t.Errorf("use-context a: reached %s", got)
	}
	if got := which("--context", "b"); got != "b" {
		t.Errorf("--context b: reached %s", got)
	}
	if got := which("--context", "b", "--socket", da.sock); got != "a" {
		t.Errorf("--context b --socket A: reached %s, want the flag's", got)
	}
	mustCtl(t, "config", "use-context", "b")
	if got := which(); got != "b" {
		t.Errorf("use-context b: reached %s", got)
	}
	t.Setenv("LISTENERD_SOCKET", da.sock)
	if got := which(); got != "a" {
		t.Errorf("LISTENERD_SOCKET=A with context b: reached %s, want the environment's", got)
	}
	if got := which("--socket", db.sock); got != "b" {
		t.Errorf("--socket B over LISTENERD_SOCKET=A: reached %s", got)
	}
	t.Setenv("LISTENERD_SOCKET", "")

	// Completion asks the context's daemon, and completes context names.
	r := ctlIn(t, "--context", "a", "__complete", "get", "on-")
	if r.code != ExitOK || !strings.Contains(r.stdout, "on-a") || strings.Contains(r.stdout, "on-b") {
		t.Errorf("__complete --context a get on-: exit %d, %q", r.code, r.stdout)
	}
	for _, tt := range []struct{ args, want []string }{
		{[]string{"--context", ""}, []string{"a", "b"}},
		{[]string{"--context", "b"}, []string{"b"}},
		{[]string{"config", "use-context", ""}, []string{"a", "b"}},
		{[]string{"config", "delete-context", "a", ""}, nil},
	} {
		r := ctlIn(t, append([]string{"__complete"}, tt.args...)...)
		var words []string
		for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			if !strings.HasPrefix(l, ":") {
				words = append(words, strings.SplitN(l, "\t", 2)[0])
			}
		}
		if r.code != ExitOK || strings.Join(words, " ") != strings.Join(tt.want, " ") {
			t.Errorf("__complete %q: exit %d, words %q, want %q", tt.args, r.code, words, tt.want)
		}
	}

	// A context's daemon that is not there is named in the error.
	mustCtl(t, "config", "set-context", "gone", "--socket", filepath.Join(t.TempDir(), "gone.sock"))
	if r := ctlIn(t, "--context", "gone", "ls"); r.code != ExitUnavailable || !strings.Contains(r.stderr, `context "gone" in `+path) {
		t.Errorf("--context gone: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestContextPrecedence checks, key by key, flag > environment > context >
// default, on the flags of ctl fleet watch (NATS) and ctl ls (the daemon).
func TestContextPrecedence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.yaml")
	t.Setenv(CtlConfigEnv, path)
	for _, env := range []string{"LISTENERD_SOCKET", APIEnv, TokenFileEnv, "LISTENERD_NATS", "LISTENERD_NATS_CREDS"} {
		t.Setenv(env, "")
	}
	mustCtl(t, "config", "set-context", "c", "--api", "ctx.example:7443", "--ca", "/ctx-ca.pem", "--token-file", "/ctx-token",
		"--nats", "nats://ctx:4222", "--nats-creds", "/ctx.creds")
	mustCtl(t, "config", "use-context", "c")

	// flags returns the values of names once ctl parsed args and the
	// context was applied, as a command sees them when it runs.
	flags := func(args []string, names ...string) map[string]string {
		t.Helper()
		a := newApp(&testkit.Buffer{}, &testkit.Buffer{})
		root := a.rootCmd()
		cmd, rest, err := root.Find(args)
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.ParseFlags(rest); err != nil {
			t.Fatal(err)
		}
		if err := a.useContext(cmd); err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		got := map[string]string{}
		for _, n := range names {
			got[n] = cmd.Flags().Lookup(n).Value.String()
		}
		return got
	}
	check := func(what string, got map[string]string, want map[string]string) {
		t.Helper()
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: --%s = %q, want %q", what, k, got[k], v)
			}
		}
	}
	daemon := []string{"socket", "api", "ca", "token-file"}
	nats := []string{"nats", "nats-creds"}

	check("context only", flags([]string{"ls"}, daemon...), map[string]string{"api": "ctx.example:7443", "ca": "/ctx-ca.pem", "token-file": "/ctx-token"})
	check("context only", flags([]string{"fleet", "watch"}, nats...), map[string]string{"nats": "nats://ctx:4222", "nats-creds": "/ctx.creds"})
	check("--token-file", flags([]string{"ls", "--token-file", "/flag-token"}, daemon...), map[string]string{"api": "ctx.example:7443", "token-file": "/flag-token"})
	check("--nats-creds", flags([]string{"fleet", "watch", "--nats-creds", "/flag.creds"}, nats...), map[string]string{"nats": "nats://ctx:4222", "nats-creds": "/flag.creds"})
	// Naming another daemon or NATS sets the context's keys of that group aside.
	check("--api", flags([]string{"ls", "--api", "flag.example:1"}, daemon...), map[string]string{"api": "flag.example:1", "ca": "", "token-file": ""})
	check("--socket", flags([]string{"ls", "--socket", "/flag.sock"}, daemon...), map[string]string{"socket": "/flag.sock", "api": ""})
	check("--nats", flags([]string{"fleet", "watch", "--nats", "nats://flag:1"}, nats...), map[string]string{"nats": "nats://flag:1", "nats-creds": ""})
	check("--socket beside --context", flags([]string{"--context", "c", "ls", "--socket", "/s"}, "api"), map[string]string{"api": ""})

	t.Setenv(TokenFileEnv, "/env-token")
	t.Setenv("LISTENERD_NATS_CREDS", "/env.creds")
	check("environment", flags([]string{"ls"}, daemon...), map[string]string{"api": "ctx.example:7443", "token-file": ""}) // options() reads the variable
	check("environment", flags([]string{"fleet", "watch"}, nats...), map[string]string{"nats": "nats://ctx:4222", "nats-creds": "/env.creds"})
	check("flag over environment", flags([]string{"fleet", "watch", "--nats-creds", "/flag.creds"}, nats...), map[string]string{"nats-creds": "/flag.creds"})
	t.Setenv("LISTENERD_NATS", "nats://env:1")
	check("LISTENERD_NATS", flags([]string{"fleet", "watch"}, nats...), map[string]string{"nats": "nats://env:1", "nats-creds": "/env.creds"})
	t.Setenv(APIEnv, "env.example:1")
	check("LISTENERD_API", flags([]string{"ls"}, daemon...), map[string]string{"api": "env.example:1", "ca": ""})

	// Without a current context nothing is filled in: the defaults hold.
	for _, env := range []string{APIEnv, TokenFileEnv, "LISTENERD_NATS", "LISTENERD_NATS_CREDS"} {
		t.Setenv(env, "")
	}
	mustCtl(t, "config", "delete-context", "c")
	check("no context", flags([]string{"ls"}, daemon...), map[string]string{"api": "", "ca": "", "token-file": ""})
}

// Paths that set-context is given are stored absolute; a relative path
// written in the file is taken from the file's directory, as kubectl does.
func TestContextRelativePaths(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ctl.yaml")
	t.Setenv(CtlConfigEnv, path)
	t.Setenv("LISTENERD_SOCKET", "")
	t.Chdir(dir)
	mustCtl(t, "config", "set-context", "rel", "--socket", "api.sock")
	c, err := loadContexts(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.contexts["rel"]["socket"]; got != filepath.Join(dir, "api.sock") {
		t.Errorf("stored socket %q, want it absolute", got)
	}
	if err := os.WriteFile(path, []byte("current-context: rel\ncontexts:\n  rel:\n    socket: sub/api.sock\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	a := newApp(&testkit.Buffer{}, &testkit.Buffer{})
	root := a.rootCmd()
	cmd, _, err := root.Find([]string{"ls"})
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.ParseFlags(nil); err != nil {
		t.Fatal(err)
	}
	if err := a.useContext(cmd); err != nil {
		t.Fatal(err)
	}
	if a.socket != filepath.Join(dir, "sub", "api.sock") {
		t.Errorf("socket %q, want it from the file's directory", a.socket)
	}
}
