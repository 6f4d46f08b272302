package listenerd

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

func TestUnixTarget(t *testing.T) {
	if got := unixTarget("/run/user/1/listenerd/listenerd.sock"); got != "unix:///run/user/1/listenerd/listenerd.sock" {
		t.Errorf("absolute: %q", got)
	}
	if got := unixTarget("api.sock"); got != "unix:api.sock" {
		t.Errorf("relative: %q", got)
	}
}

// A relative socket path is relative to the working directory, as ctl's
// --socket always took it.
func TestDialRelativeSocket(t *testing.T) {
	sock := os.Getenv(SocketEnv) // the test daemon's, set by TestMain
	t.Chdir(filepath.Dir(filepath.Dir(sock)))
	c, err := Dial(Options{Socket: filepath.Join(filepath.Base(filepath.Dir(sock)), filepath.Base(sock))})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	if _, err := c.ListListeners(ctx, &listenerdv1.ListListenersRequest{}); err != nil {
		t.Fatalf("list over a relative socket path: %v", err)
	}
}

func TestLoopbackHost(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1": true, "127.1.2.3": true, "::1": true, "::ffff:127.0.0.1": true, "localhost": true,
		"0.0.0.0": false, "10.0.0.1": false, "example.com": false, "": false,
	} {
		if got := loopbackHost(host); got != want {
			t.Errorf("loopbackHost(%q) = %v", host, got)
		}
	}
}
