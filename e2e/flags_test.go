package e2e

import (
	"strings"
	"testing"
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
	} {
		r := runDaemonOnce(t, tc.args...)
		if r.code != 2 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, tc.want) || r.stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", tc.args, r.code, r.stdout, r.stderr, tc.want)
		}
	}
}
