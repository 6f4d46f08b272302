package e2e

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// nodeExample is the Node.js client under examples/.
const nodeExample = "../examples/node"

// The Node example runs green against a fresh daemon: it creates an echo
// listener, sees a TCP client's opened and closed events, and closes it.
// It needs node and npm, and npm's registry; without them the test is
// skipped, unless $LISTENERD_REQUIRE_NODE is 1 (needNode).
func TestNodeExample(t *testing.T) {
	node := needNode(t, "the Node.js example (examples/node)")
	ctx, cancel := context.WithTimeout(context.Background(), 2*guard)
	defer cancel()

	d := startDaemon(t)
	cmd := exec.CommandContext(ctx, node, filepath.Join(nodeExample, "client.js"), "--socket", d.socket)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("node client.js: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"created ln-", "CONNECTED TO: 127.0.0.1:", "echo: I am Chuck Norris!",
		" connection_opened ", " connection_closed ", "CLOSE_REASON_PEER_CLOSED in=18 out=18", " listener_closed ", "done\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("node client.js printed no %q:\n%s", want, out)
		}
	}
	if i, j := strings.Index(out, " connection_opened "), strings.Index(out, " connection_closed "); i < 0 || j < i {
		t.Errorf("opened not before closed:\n%s", out)
	}
	// It left nothing behind.
	list, err := d.client.ListListeners(testContext(t), &listenerdv1.ListListenersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range list.GetListeners() {
		if strings.HasPrefix(l.GetName(), "node-example-") && l.GetStatus().GetState() != listenerdv1.State_STATE_CLOSED {
			t.Errorf("the example's listener is still there: %v", l)
		}
	}

	// Without a daemon it fails with one line and exit 1.
	cmd = exec.CommandContext(ctx, node, filepath.Join(nodeExample, "client.js"), "--socket", filepath.Join(testkit.ShortDir(t), "none.sock"))
	stderr.Reset()
	cmd.Stdout, cmd.Stderr = nil, &stderr
	var ee *exec.ExitError
	if err := cmd.Run(); !errors.As(err, &ee) || ee.ExitCode() != 1 ||
		!strings.Contains(stderr.String(), "cannot reach listenerd") || strings.Count(strings.TrimSpace(stderr.String()), "\n") != 0 {
		t.Errorf("without a daemon: %v, stderr %q", err, stderr.String())
	}
}
