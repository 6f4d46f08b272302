package testkit

import (
	"os"
	"path/filepath"
	"testing"
)

// ShortDir returns a new temporary directory, removed at the end of the
// test, whose path is short enough for unix sockets inside it (a socket's
// path is limited to about 108 bytes, which t.TempDir's long names can
// exceed). It is readable by everyone, so that only the modes a program
// gives what it creates inside guard those.
func ShortDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ld")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// WriteFile writes text to a new file name in a temporary directory of
// the test and returns its path.
func WriteFile(t testing.TB, name, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
