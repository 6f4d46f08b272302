package ctl

import (
	"context"
	"encoding/json"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	daemon "github.com/listenerd/listenerd/internal/server"
	"github.com/listenerd/listenerd/internal/testkit"
	"github.com/listenerd/listenerd/internal/version"
)

// runDaemon runs a real daemon (server.Run, ephemeral) in this process
// on a temporary socket until the test ends, and returns the socket once
// it serves.
func runDaemon(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(testkit.ShortDir(t), "run", "listenerd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	out := &testkit.Buffer{}
	serving := make(chan struct{})
	out.OnOutput("listenerd serving on unix://", func() { close(serving) })
	done := make(chan error, 1)
	go func() { done <- daemon.Run(ctx, daemon.Config{Socket: sock, Ephemeral: true, Stdout: out}) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	select {
	case <-serving:
	case err := <-done:
		t.Fatalf("daemon stopped before serving: %v", err)
	}
	return sock
}

// ctl version names ctl's build and the daemon's, in text and in one JSON
// document; the daemon's is the one it reports in its status.
func TestVersionAgainstDaemon(t *testing.T) {
	sock := runDaemon(t)
	want := version.Get().String() // one binary: the daemon's build is this test's
	r := runCtl(t, sock, "version")
	if r.code != 0 || r.stdout != "client: "+want+"\ndaemon: "+want+"\n" || r.stderr != "" {
		t.Errorf("ctl version: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runCtl(t, sock, "version", "-o", "json")
	var doc map[string]struct {
		Version, GoVersion string
		Dirty              bool
	}
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil || r.code != 0 || strings.Count(r.stdout, "\n") != 1 {
		t.Fatalf("ctl version -o json: exit %d, %q: %v", r.code, r.stdout, err)
	}
	for _, who := range []string{"client", "daemon"} {
		if got := doc[who]; got.GoVersion != runtime.Version() || got.Version != version.Get().Version {
			t.Errorf("%s: %+v, want %s built by %s", who, got, version.Get().Version, runtime.Version())
		}
	}
	r = runCtl(t, sock, "status")
	if r.code != 0 || !strings.Contains(r.stdout, "version") || !strings.Contains(r.stdout, want) {
		t.Errorf("ctl status: exit %d, stdout %q", r.code, r.stdout)
	}
}

// Without a daemon, ctl version still says its own, and fails as other
// commands do when the daemon is away.
func TestVersionWithoutDaemon(t *testing.T) {
	sock := filepath.Join(testkit.ShortDir(t), "none.sock")
	r := runCtl(t, sock, "version")
	if r.code != ExitUnavailable || r.stdout != "client: "+version.Get().String()+"\n" || !strings.Contains(r.stderr, "cannot reach listenerd") {
		t.Errorf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	r = runCtl(t, sock, "--version")
	if r.code != 0 || r.stdout != "ctl "+version.Get().String()+"\n" {
		t.Errorf("--version: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
}
