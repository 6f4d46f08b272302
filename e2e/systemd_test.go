package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/listenerd/listenerd/internal/testkit"
)

// Socket activation: systemd-socket-activate binds the API socket and
// starts the daemon on the first connection (the health check's) with it
// as $LISTEN_FDS; the daemon serves its API there, binding nothing, and
// leaves the socket file, which is the service manager's, at exit.
func TestSystemdSocketActivation(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate not installed")
	}
	dir := testkit.ShortDir(t)
	if err := os.Mkdir(filepath.Join(dir, "run"), 0o700); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "run", "listenerd.sock")
	d := startDaemonWrapped(t, dir, []string{activate, "-l", sock}, "--ephemeral")
	if !strings.Contains(d.stderr.String(), "API socket passed in by the service manager") {
		t.Fatalf("the daemon did not serve on the passed socket:\n%s", d.stderr.String())
	}
	ctl := func(args ...string) result {
		r := runBin(t, ctlBin, nil, "", append([]string{"--socket", sock}, args...)...)
		if r.code != 0 {
			t.Fatalf("ctl %v: exit %d: %s", args, r.code, r.stderr)
		}
		return r
	}
	ctl("listen", "--port", "0", "--name", "activated")
	if out := ctl("ls").stdout; !strings.Contains(out, "activated") {
		t.Fatalf("ctl ls printed %q", out)
	}
	d.stop()
	if fi, err := os.Lstat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("the passed socket's file is gone after the daemon stopped: %v", err)
	}
}
