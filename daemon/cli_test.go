package main

import (
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/listenerd/listenerd/internal/testkit"
)

// run runs the command line in process; serve records the settings
// instead of serving.
func run(t *testing.T, env map[string]string, args ...string) (code int, got *settings, stdout, stderr string) {
	t.Helper()
	var out, errOut strings.Builder
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	code = execute(args, &out, &errOut, lookup, func(s *settings) error { got = s; return nil })
	return code, got, out.String(), errOut.String()
}

// Both spellings of a flag's value, the environment under it and the file
// under both; the policy and the checks see the result.
func TestPrecedence(t *testing.T) {
	path := testkit.WriteFile(t, "f.yaml", "shutdown-timeout: 1s\nhistory: 3000\nallow-hosts: [127.0.0.1, \"::1\"]\nephemeral: true\n")
	code, s, _, stderr := run(t, map[string]string{"LISTENERD_CONFIG": path, "LISTENERD_HISTORY": "2000", "LISTENERD_SOCKET": "/tmp/x.sock"},
		"--shutdown-timeout=3s", "--max-listeners", "7")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	c := s.cfg
	if c.ShutdownTimeout != 3*time.Second || c.History != 2000 || c.MaxListeners != 7 || !c.Ephemeral || c.Socket != "/tmp/x.sock" {
		t.Errorf("config %+v", c)
	}
	if err := c.Policy.Check(netip.MustParseAddr("10.1.1.1"), 8080); err == nil {
		t.Errorf("policy from the file's allow-hosts lets 10.1.1.1 bind: %v", c.Policy)
	}
}

// Mistakes exit 2 with one line that says where the value came from.
func TestErrors(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		file string
		args []string
		want string
	}{
		{nil, "", []string{"--shutdown-timeout", "5"}, `listenerd: --shutdown-timeout "5": not a duration; for example 5s or 1m30s`},
		{map[string]string{"LISTENERD_SHUTDOWN_TIMEOUT": "5"}, "", nil, `listenerd: LISTENERD_SHUTDOWN_TIMEOUT="5": not a duration; for example 5s or 1m30s`},
		{nil, "ephemeral: true\nshutdown-timeout: 5\n", nil, `:2:19: shutdown-timeout: "5": not a duration; for example 5s or 1m30s`},
		{map[string]string{"LISTENERD_WATCH_QUEUE": "0"}, "", nil, "--watch-queue 0: must be positive (from LISTENERD_WATCH_QUEUE)"},
		{nil, "allow-hosts: 10.1.2.3/8\n", nil, "--allow-hosts: "},
		{nil, "", []string{"-socket", "/tmp/s"}, "(long flags take two dashes: --socket)"},
		{nil, "", []string{"config", "extra"}, `unknown command "extra"`},
		{nil, "", []string{"--nats", "nats://127.0.0.1:4222", "--nats-heartbeat", "0s"}, "--nats-heartbeat 0s: must be positive"},
		{nil, "nats: nats://127.0.0.1:4222\nnats-heartbeat: -1s\n", nil, "--nats-heartbeat -1s: must be positive"},
	} {
		args := tc.args
		if tc.file != "" {
			args = append(args, "--config", testkit.WriteFile(t, "f.yaml", tc.file))
		}
		code, s, stdout, stderr := run(t, tc.env, args...)
		if code != 2 || s != nil || stdout != "" || !strings.Contains(stderr, tc.want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%v %v: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", tc.env, args, code, stdout, stderr, tc.want)
		}
	}
}

// --nats-heartbeat: 10s unless given, on the command line or in the
// config file as the other --nats-* flags.
func TestNATSHeartbeat(t *testing.T) {
	code, s, _, stderr := run(t, nil, "--nats", "nats://127.0.0.1:4222")
	if code != 0 || s.cfg.Fleet.Heartbeat != 10*time.Second {
		t.Fatalf("default: exit %d (%s), heartbeat %v", code, stderr, s.cfg.Fleet.Heartbeat)
	}
	path := testkit.WriteFile(t, "f.yaml", "nats: nats://127.0.0.1:4222\nnats-heartbeat: 250ms\n")
	if code, s, _, stderr = run(t, nil, "--config", path); code != 0 || s.cfg.Fleet.Heartbeat != 250*time.Millisecond {
		t.Fatalf("from the file: exit %d (%s), heartbeat %v", code, stderr, s.cfg.Fleet.Heartbeat)
	}
	if code, s, _, stderr = run(t, map[string]string{"LISTENERD_NATS_HEARTBEAT": "3s"}, "--config", path); code != 0 || s.cfg.Fleet.Heartbeat != 3*time.Second {
		t.Fatalf("from the environment: exit %d (%s), heartbeat %v", code, stderr, s.cfg.Fleet.Heartbeat)
	}
}

// listenerd config prints each key with its source, masks secrets, and
// serves nothing.
func TestConfigCommand(t *testing.T) {
	path := testkit.WriteFile(t, "f.yaml", "token-file: /etc/listenerd/token\napi-listen: 127.0.0.1:0\n")
	code, s, stdout, stderr := run(t, map[string]string{"LISTENERD_MAX_WATCHERS": "9"}, "config", "--config", path, "--history=5000")
	if code != 0 || s != nil || stderr != "" {
		t.Fatalf("exit %d, served %v, stderr %q", code, s != nil, stderr)
	}
	lines := strings.Split(stdout, "\n")
	for _, want := range []string{
		"history: 5000 # flag",
		"max-watchers: 9 # env LISTENERD_MAX_WATCHERS",
		`token-file: "********" # file ` + path + ":1:13, secret",
		"api-listen: 127.0.0.1:0 # file " + path + ":2:13",
		"shutdown-timeout: 10s # default",
		"# config file: " + path,
	} {
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.Join(strings.Fields(l), " ") == want }) {
			t.Errorf("no line %q in\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "/etc/listenerd/token") || strings.Contains(stdout, "\nconfig:") {
		t.Errorf("secret or config key shown:\n%s", stdout)
	}
}

// The example in contrib loads, and says what it sets.
func TestContribExample(t *testing.T) {
	path := filepath.Join("..", "contrib", "listenerd.yaml")
	code, _, stdout, stderr := run(t, nil, "config", "--config", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"allow-hosts: 127.0.0.1,::1,10.0.0.0/8", "allow-ports: 0,8000-8999", "shutdown-timeout: 30s", "metrics: 127.0.0.1:9464"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("no %q in\n%s", want, stdout)
		}
	}
	code, s, _, stderr := run(t, nil, "--config", path)
	if code != 0 || s.cfg.Socket != "/run/listenerd/listenerd.sock" || !s.cfg.Policy.NoPrivileged || s.cfg.MaxListeners != 256 {
		t.Errorf("exit %d (%s), config %+v", code, stderr, s)
	}
}
