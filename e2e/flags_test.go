package e2e

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/listenerd/listenerd/internal/testkit"
)

// The daemon's command line: --help is not an error, and every mistake is
// one line naming its flag, with exit code 2, and starts nothing.
func TestDaemonFlagErrors(t *testing.T) {
	r := runDaemonOnce(t, "--help")
	if r.code != 0 || !strings.Contains(r.stdout, "-socket") || !strings.Contains(r.stdout, "-history-data") || !strings.Contains(r.stdout, "-history-bytes") || r.stderr != "" {
		t.Errorf("--help: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "-bogus"},
		{[]string{"--log-level", "loud"}, "-log-level"},
		{[]string{"--history", "-1"}, "--history -1: must be positive"},
		{[]string{"--history-data", "0"}, "--history-data 0: must be positive"},
		{[]string{"--history-bytes", "1000"}, "--history-bytes 1000: at least 1048576 (1 MiB)"},
		{[]string{"--allow-hosts", "10.1.2.3/8"}, "did you mean the network 10.0.0.0/8"},
		{[]string{"--watch-queue", "0"}, "--watch-queue 0: must be positive"},
		{[]string{"--max-watchers", "-3"}, "--max-watchers -3: must be positive"},
		{[]string{"--max-listeners", "-1"}, "--max-listeners -1: must not be negative"},
		{[]string{"--api-burst", "-1"}, "--api-burst -1: must not be negative"},
		{[]string{"extra"}, "unexpected arguments"},
		{[]string{"--shutdown-timeout", "5"}, `--shutdown-timeout "5": not a duration; for example 5s or 1m30s`},
		{[]string{"-ephemeral"}, "long flags take two dashes: --ephemeral"},
	} {
		r := runDaemonOnce(t, tc.args...)
		if r.code != 2 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, tc.want) || r.stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", tc.args, r.code, r.stdout, r.stderr, tc.want)
		}
	}
}

// The environment and a config file set the daemon's flags, a flag wins
// over both, and listenerd config says where each value came from; a bad
// value in either names where it is.
func TestDaemonConfigSources(t *testing.T) {
	dir := testkit.ShortDir(t)
	file := filepath.Join(dir, "f.yaml")
	if err := os.WriteFile(file, []byte("ephemeral: true\nhistory: 3000\nmax-watchers: 5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"LISTENERD_CONFIG=" + file, "LISTENERD_HISTORY=4000", "LISTENERD_SHUTDOWN_TIMEOUT=5s"}
	r := runBin(t, daemonBin, env, "", "config", "--max-watchers=6")
	for _, want := range []string{"history: 4000", "# env LISTENERD_HISTORY", "shutdown-timeout: 5s", "max-watchers: 6", "ephemeral: true", "# file " + file + ":1:12"} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("config: exit %d, stderr %q; no %q in\n%s", r.code, r.stderr, want, r.stdout)
		}
	}
	r = runBin(t, daemonBin, []string{"LISTENERD_SHUTDOWN_TIMEOUT=5"}, "", "config")
	if want := `LISTENERD_SHUTDOWN_TIMEOUT="5": not a duration`; r.code != 2 || !strings.Contains(r.stderr, want) {
		t.Errorf("bad variable: exit %d, stderr %q; want 2 and %q", r.code, r.stderr, want)
	}
	// The daemon serves on the file's settings: ephemeral, so no state
	// directory is made.
	d := startDaemonPrepared(t, dir, nil, nil, "--config", file)
	d.mustCtl("status")
	if _, err := os.Stat(filepath.Join(dir, "state")); !os.IsNotExist(err) {
		t.Errorf("state directory made by an ephemeral daemon: %v", err)
	}
}

// Both binaries say which build they are, the same for both: one
// toolchain built them from one tree.
func TestVersionFlags(t *testing.T) {
	d := runBin(t, daemonBin, nil, "", "--version")
	c := runBin(t, ctlBin, nil, "", "--version")
	dv, _ := strings.CutPrefix(strings.TrimSpace(d.stdout), "listenerd ")
	cv, _ := strings.CutPrefix(strings.TrimSpace(c.stdout), "ctl ")
	if d.code != 0 || c.code != 0 || dv != cv || !strings.HasSuffix(dv, " "+runtime.Version()) || d.stderr != "" || c.stderr != "" {
		t.Errorf("listenerd --version: exit %d, %q %q; ctl --version: exit %d, %q %q", d.code, d.stdout, d.stderr, c.code, c.stdout, c.stderr)
	}
}
