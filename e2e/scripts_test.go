package e2e

import (
	"os/exec"
	"strings"
	"testing"
)

// Scripts: ctl's JSON read by other programs, and ctl watch across a
// daemon restart.

// checkJSONTool passes out through python3 -m json.tool, which reads one
// JSON document and fails on anything more, and looks for want in its
// indented output. Skipped (the check, not the test) without python3.
func checkJSONTool(t *testing.T, out, want string) {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Log("python3 is not on PATH: json.tool check skipped")
		return
	}
	r := runBinIn(t, py, out, "-m", "json.tool")
	if r.code != 0 {
		t.Fatalf("python3 -m json.tool: exit %d: %s\ninput: %q", r.code, r.stderr, out)
	}
	if !strings.Contains(r.stdout, want) {
		t.Errorf("python3 -m json.tool: no %q in\n%s", want, r.stdout)
	}
}

// runBinIn is runBin with stdin.
func runBinIn(t *testing.T, bin, stdin string, args ...string) result {
	t.Helper()
	return runBin(t, bin, nil, stdin, args...)
}
