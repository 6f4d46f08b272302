package config

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/listenerd/listenerd/internal/testkit"
)

type testFlags struct {
	timeout time.Duration
	history int
	hosts   string
	token   string
	quiet   bool
	file    string
}

func newFlags() (*pflag.FlagSet, *testFlags) {
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	v := &testFlags{}
	fs.StringVar(&v.file, "config", "", "file")
	fs.DurationVar(&v.timeout, "shutdown-timeout", 10*time.Second, "")
	fs.IntVar(&v.history, "history", 10000, "")
	fs.StringVar(&v.hosts, "allow-hosts", "", "")
	fs.StringVar(&v.token, "token-file", "", "")
	fs.BoolVar(&v.quiet, "quiet", false, "")
	List(fs, "allow-hosts")
	Secret(fs, "token-file")
	return fs, v
}

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func resolve(t *testing.T, args []string, vars map[string]string) (*testFlags, *Effective, error) {
	t.Helper()
	fs, v := newFlags()
	if err := fs.Parse(args); err != nil {
		return v, nil, FlagError(fs, err)
	}
	eff, err := Resolve(fs, "LISTENERD", "config", env(vars))
	return v, eff, err
}

// Flag over environment over file over default, each setting saying
// which.
func TestPrecedence(t *testing.T) {
	path := testkit.WriteFile(t, "f.yaml", "shutdown-timeout: 1s\nhistory: 7\nallow-hosts:\n  - 127.0.0.1\n  - \"::1\"\nquiet: true\n")
	v, eff, err := resolve(t, []string{"--config", path, "--shutdown-timeout=3s"},
		map[string]string{"LISTENERD_SHUTDOWN_TIMEOUT": "2s", "LISTENERD_HISTORY": "8", "LISTENERD_OTHER": "x"})
	if err != nil {
		t.Fatal(err)
	}
	if v.timeout != 3*time.Second || v.history != 8 || v.hosts != "127.0.0.1,::1" || !v.quiet || v.token != "" {
		t.Errorf("values %+v", *v)
	}
	want := map[string]Setting{
		"shutdown-timeout": {Source: Flag},
		"history":          {Source: Env, Where: "LISTENERD_HISTORY"},
		"allow-hosts":      {Source: File, Where: path + ":4:3"},
		"quiet":            {Source: File, Where: path + ":6:8"},
		"token-file":       {Source: Default},
	}
	for name, w := range want {
		s, ok := eff.Lookup(name)
		if !ok || s.Source != w.Source || s.Where != w.Where {
			t.Errorf("%s: %+v, want source %v at %q", name, s, w.Source, w.Where)
		}
	}
	if _, ok := eff.Lookup("config"); ok || eff.File != path {
		t.Errorf("config file %q, listed %v", eff.File, ok)
	}
}

// The file may come from the environment, and a variable set empty counts
// as unset.
func TestFileFromEnv(t *testing.T) {
	path := testkit.WriteFile(t, "f.yaml", "# comment\nhistory: 5 # five\n")
	v, _, err := resolve(t, nil, map[string]string{"LISTENERD_CONFIG": path, "LISTENERD_SHUTDOWN_TIMEOUT": ""})
	if err != nil || v.history != 5 || v.timeout != 10*time.Second {
		t.Fatalf("err %v, values %+v", err, *v)
	}
	for _, text := range []string{"", "# nothing\n", "---\n"} {
		if _, _, err := resolve(t, []string{"--config", testkit.WriteFile(t, "f.yaml", text)}, nil); err != nil {
			t.Errorf("%q: %v", text, err)
		}
	}
}

// Every mistake names where it is and gives an example of a valid value.
func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		file string // written, and named by --config
		want string // with "F" for the file's path
	}{
		{"flag duration", []string{"--shutdown-timeout", "5"}, nil, "", `--shutdown-timeout "5": not a duration; for example 5s or 1m30s`},
		{"flag int", []string{"--history=x"}, nil, "", `--history "x": not an integer; for example 10000`},
		{"flag bool", []string{"--quiet=maybe"}, nil, "", `--quiet "maybe": not a boolean; for example true or false`},
		{"one dash", []string{"-quiet"}, nil, "", `unknown shorthand flag: 'q' in -quiet (long flags take two dashes: --quiet)`},
		{"one dash, equals", []string{"-shutdown-timeout=1s"}, nil, "", `unknown shorthand flag: 's' in -shutdown-timeout=1s (long flags take two dashes: --shutdown-timeout)`},
		{"env", nil, map[string]string{"LISTENERD_SHUTDOWN_TIMEOUT": "5"}, "", `LISTENERD_SHUTDOWN_TIMEOUT="5": not a duration; for example 5s or 1m30s`},
		{"file value", nil, nil, "history: 1\nquiet: false\nshutdown-timeout: 5\n", `F:3:19: shutdown-timeout: "5": not a duration; for example 5s or 1m30s`},
		{"unknown key", nil, nil, "history: 1\nshutdown-timout: 5s\n", `F:2:1: unknown key "shutdown-timout"`},
		{"duplicate key", nil, nil, "history: 1\nhistory: 2\n", `F:2:1: mapping key "history" already defined`},
		{"nested", nil, nil, "history:\n  a: 1\n", `F:2:4: history: want a value, not a mapping`},
		{"list of one value", nil, nil, "history: [1, 2]\n", `F:1:10: history: takes one value, not a list`},
		{"not a mapping", nil, nil, "- history\n", `F:1:1: want a mapping of keys to values (key: value), not a list`},
		{"syntax", nil, nil, "history: [1\n", `F:1:`},
		{"config in config", nil, nil, "config: other.yaml\n", `F:1:1: config: a config file cannot name another`},
		{"help", nil, nil, "help: true\n", `F:1:1: unknown key "help"`},
		{"anchor", nil, nil, "history: &h 1\n", `F:1:10: history: want a value, not an anchor (&)`},
		{"two documents", nil, nil, "history: 1\n---\nquiet: true\n", `F:3:`},
		{"missing file", []string{"--config", "/nonexistent/f.yaml"}, nil, "", `--config /nonexistent/f.yaml: no such file`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			path := ""
			if tc.file != "" {
				path = testkit.WriteFile(t, "f.yaml", tc.file)
				args = append(args, "--config", path)
			}
			_, _, err := resolve(t, args, tc.env)
			want := strings.ReplaceAll(tc.want, "F", path)
			if err == nil || !strings.HasPrefix(err.Error(), want) || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %v, want one line starting %q", err, want)
			}
		})
	}
}

// The printed configuration reads back as the same configuration, says
// where each value came from, and masks secrets.
func TestWriteYAML(t *testing.T) {
	path := testkit.WriteFile(t, "f.yaml", "token-file: /etc/secret\nallow-hosts: 127.0.0.1,::1\n")
	_, eff, err := resolve(t, []string{"--config", path, "--history", "9"}, map[string]string{"LISTENERD_QUIET": "true"})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := eff.WriteYAML(&b, "effective\nconfiguration"); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"# effective\n# configuration\n", "history: 9", "# flag\n", "quiet: true", "# env LISTENERD_QUIET\n",
		"shutdown-timeout: 10s", "# default\n", "token-file: \"" + Mask + "\"", "# file " + path + ":1:13, secret\n", "allow-hosts: 127.0.0.1,::1"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "/etc/secret") {
		t.Errorf("secret shown:\n%s", out)
	}
	v, _, err := resolve(t, []string{"--config", testkit.WriteFile(t, "f.yaml", out)}, nil)
	if err != nil || v.history != 9 || !v.quiet || v.hosts != "127.0.0.1,::1" || v.timeout != 10*time.Second {
		t.Errorf("read back: %v, %+v", err, *v)
	}
}

// Explain says where a value a later check refuses came from.
func TestExplain(t *testing.T) {
	_, eff, err := resolve(t, nil, map[string]string{"LISTENERD_HISTORY": "-1"})
	if err != nil {
		t.Fatal(err)
	}
	got := eff.Explain(errString("--history -1: must be positive")).Error()
	if got != "--history -1: must be positive (from LISTENERD_HISTORY)" {
		t.Errorf("got %q", got)
	}
	if got := eff.Explain(errString("--quiet: no")).Error(); got != "--quiet: no" {
		t.Errorf("default: got %q", got)
	}
}

type errString string

func (e errString) Error() string { return string(e) }
