package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// helloModule is a program in a module of its own, as an integrator
// writes one: it imports the Go client package and serves HTTP with
// http.Serve on the daemon's listener.
const helloModule = `package main

import (
	"context"
	"fmt"
	"net/http"
	"os"

	"github.com/listenerd/listenerd/api/listenerd"
)

func main() {
	c, err := listenerd.Dial(listenerd.Options{}) // LISTENERD_SOCKET
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	l, err := c.Listen(context.Background(), "127.0.0.1:0", listenerd.WithName("hello"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(l.Addr())
	http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s to %s\n", r.Host, r.RemoteAddr)
	}))
}
`

// A Go program in another module serves HTTP through the daemon with
// http.Serve on the package's net.Listener; curl fetches from it.
func TestHTTPServeFromAnotherModule(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed")
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dir := testkit.ShortDir(t)
	files := map[string]string{
		"go.mod":  "module example.com/hello\n\ngo 1.26\n\nrequire github.com/listenerd/listenerd v0.0.0\n\nreplace github.com/listenerd/listenerd => " + repo + "\n",
		"main.go": helloModule,
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "hello")
	for _, args := range [][]string{{"mod", "tidy"}, {"build", "-o", bin, "."}} {
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %v: %v\n%s", args, err, out)
		}
	}

	d := startDaemon(t)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "LISTENERD_SOCKET="+d.socket)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &testkit.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var addr string
	select {
	case addr = <-lines:
	case <-time.After(guard):
		t.Fatalf("the program printed no address; stderr: %s", stderr.String())
	}
	if addr == "" {
		t.Fatalf("the program ended: %s", stderr.String())
	}
	for range 3 { // keep-alive and new connections alike
		got, err := exec.Command(curl, "-sS", "--max-time", "60", "http://"+addr+"/").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(got), "hello from "+addr+" to 127.0.0.1:") {
			t.Fatalf("curl: %q, %v", got, err)
		}
	}
	// The daemon counts what the program served.
	r, err := d.client.GetListener(testContext(t), &listenerdv1.GetListenerRequest{Id: "hello"})
	if err != nil || r.GetListener().GetSpec().GetHandler().GetStream() == nil || r.GetListener().GetStatus().GetAcceptedConnections() == 0 {
		t.Fatalf("get hello: %v, %v", r, err)
	}
}
