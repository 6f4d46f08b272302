package server

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// socketPath is a socket path in a fresh directory made as the daemon
// makes it (0700).
func socketPath(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(testkit.ShortDir(t), "run")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "listenerd.sock")
}

// A socket that answers is never removed, even with no lock file beside
// it: the daemon refuses, naming the path and who answers.
func TestLiveSocketIsLeftAlone(t *testing.T) {
	path := socketPath(t)
	foreign, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	err = Run(testContext(t), Config{Socket: path, Ephemeral: true})
	if err == nil || !strings.Contains(err.Error(), path+" is in use") || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("Run over a live socket: %v; want a refusal naming %s and pid %d", err, path, os.Getpid())
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the live socket no longer answers: %v", err)
	}
	c.Close()
}

// A socket that nothing answers on (its daemon died) is stale: removed,
// and the daemon serves in its place.
func TestStaleSocketIsReplaced(t *testing.T) {
	path := socketPath(t)
	dead, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	dead.(*net.UnixListener).SetUnlinkOnClose(false)
	dead.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatal(err)
	}
	d := startRun(t, Config{Socket: path, Ephemeral: true})
	if _, err := d.unix.ListListeners(testContext(t), &listenerdv1.ListListenersRequest{}); err != nil {
		t.Fatal(err)
	}
}

// On exit the daemon removes its socket only if it is still the one it
// created: another one put in its place (by a second daemon, once a temp
// cleaner took the first one's files) stays.
func TestExitLeavesAnotherSocket(t *testing.T) {
	path := socketPath(t)
	var other net.Listener
	t.Cleanup(func() { // after the daemon's own cleanup has stopped it
		defer other.Close()
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("the socket put in the daemon's place is gone after it exited: %v", err)
		}
		c.Close()
	})
	startRun(t, Config{Socket: path, Ephemeral: true})
	for _, f := range []string{path, path + ".lock"} {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	if other, err = net.Listen("unix", path); err != nil {
		t.Fatal(err)
	}
}
