package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The README's install line and make install put listenerd and ctl, by
// those names, where they say, and both run.
func TestInstall(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	line := readmeInstallLine(t, filepath.Join(root, "README.md"))
	modCache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		argv []string
	}{
		{"README", []string{"sh", "-c", line}},
		{"make install", []string{"make", "--no-print-directory", "install"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gopath := t.TempDir()
			cmd := exec.Command(tc.argv[0], tc.argv[1:]...)
			cmd.Dir = root
			// Another GOPATH, the same module cache: nothing is downloaded.
			cmd.Env = append(os.Environ(), "GOPATH="+gopath, "GOBIN=", "GOMODCACHE="+strings.TrimSpace(string(modCache)))
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%v: %v\n%s", tc.argv, err, out)
			}
			for _, name := range []string{"listenerd", "ctl"} {
				r := runBin(t, filepath.Join(gopath, "bin", name), nil, "", "--version")
				if r.code != 0 || !strings.HasPrefix(r.stdout, name+" ") {
					t.Errorf("%s --version: exit %d, stdout %q, stderr %q", name, r.code, r.stdout, r.stderr)
				}
			}
		})
	}
}

// readmeInstallLine is the README's line that builds ./daemon into
// $GOPATH/bin/listenerd.
func readmeInstallLine(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := sc.Text(); strings.HasPrefix(l, "go build -o ") && strings.Contains(l, "/bin/listenerd\" ./daemon") {
			return l
		}
	}
	t.Fatalf("no install line in %s", path)
	return ""
}
