package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/fieldmaskpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// writeAtomic replaces path with text as editors and ConfigMaps do: a
// temporary file renamed over it, so that no half-written file is read.
func writeAtomic(t *testing.T, path, text string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// freePort is a port nothing listens on now: bound and let go.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// eventStream is a watch of every event from the daemon's start.
type eventStream struct {
	t  *testing.T
	ch chan *listenerdv1.Event
}

func watchAll(t *testing.T, c listenerdv1.ListenerServiceClient) *eventStream {
	t.Helper()
	ctx, cancel := context.WithCancel(testContext(t))
	zero := uint64(0)
	st, err := c.WatchEvents(ctx, &listenerdv1.WatchEventsRequest{AfterSequence: &zero})
	if err != nil {
		t.Fatal(err)
	}
	s := &eventStream{t: t, ch: make(chan *listenerdv1.Event, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(s.ch)
		for {
			resp, err := st.Recv()
			if err != nil {
				return
			}
			for _, e := range resp.GetEvents() {
				s.ch <- e
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

// reconciled waits for the next listener_reconciled event and returns it
// with the events seen before it.
func (s *eventStream) reconciled() (*listenerdv1.Event, []*listenerdv1.Event) {
	s.t.Helper()
	var before []*listenerdv1.Event
	for {
		select {
		case e, ok := <-s.ch:
			if !ok {
				s.t.Fatal("watch ended")
			}
			if e.GetListenerReconciled() != nil {
				return e, before
			}
			before = append(before, e)
		case <-testContext(s.t).Done():
			s.t.Fatal("no listener_reconciled event")
		}
	}
}

// expect waits for the next reconcile event and checks its action, name
// and that its change (or error) holds want.
func (s *eventStream) expect(action, name, want string) *listenerdv1.Event {
	s.t.Helper()
	e, _ := s.reconciled()
	r := e.GetListenerReconciled()
	if r.GetAction() != action || r.GetName() != name || !strings.Contains(r.GetChange()+r.GetError(), want) {
		s.t.Fatalf("reconciled %s %s change %q error %q; want %s %s with %q", r.GetAction(), r.GetName(), r.GetChange(), r.GetError(), action, name, want)
	}
	return e
}

// echoes checks that addr answers with an echo.
func echoes(t *testing.T, addr string) {
	t.Helper()
	c := testkit.Dial(t, addr)
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("%s: echo %q, %v", addr, buf, err)
	}
}

func getListener(t *testing.T, c listenerdv1.ListenerServiceClient, ref string) *listenerdv1.Listener {
	t.Helper()
	resp, err := c.GetListener(testContext(t), &listenerdv1.GetListenerRequest{Id: ref})
	if err != nil {
		t.Fatalf("get %s: %v", ref, err)
	}
	return resp.GetListener()
}

func TestDeclaredListenersFollowTheFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "listeners.yaml")
	const web = "  web: {spec: {port: %d, handler: {echo: {}}, limits: {maxConnections: %d}}}\n"
	const chat = "  chat: {spec: {handler: {stream: {}}}}\n"
	writeAtomic(t, file, "listeners:\n"+fmt.Sprintf(web, 0, 10))
	d := startRun(t, Config{Listeners: file, History: 1000, MaxWatchers: 8, ShutdownTimeout: guard})
	ev := watchAll(t, d.unix)

	started := ev.expect("create", "web", "")
	first := getListener(t, d.unix, "web")
	if !first.GetStatus().GetDeclared() || first.GetId() != started.GetListenerId() || first.GetSpec().GetLimits().GetMaxConnections() != 10 {
		t.Fatalf("web at start: %v", first)
	}
	oldAddr := first.GetStatus().GetBoundAddress()
	echoes(t, oldAddr)

	// An entry added.
	writeAtomic(t, file, "listeners:\n"+fmt.Sprintf(web, 0, 10)+chat)
	e := ev.expect("create", "chat", "")
	if getListener(t, d.unix, "chat").GetId() != e.GetListenerId() {
		t.Fatal("chat: the event's id is not the listener's")
	}

	// A limit changed: in place, same id, with its limits_changed event.
	writeAtomic(t, file, "listeners:\n"+fmt.Sprintf(web, 0, 100)+chat)
	e, before := ev.reconciled()
	if r := e.GetListenerReconciled(); r.GetAction() != "update" || r.GetChange() != "max_connections 10 -> 100" || e.GetListenerId() != first.GetId() {
		t.Fatalf("reconciled %v", e)
	}
	if len(before) != 1 || before[0].GetLimitsChanged().GetLimits().GetMaxConnections() != 100 {
		t.Fatalf("events before the update's: %v", before)
	}

	// The port changed: a new socket; the old port refuses, the new answers.
	port := freePort(t)
	writeAtomic(t, file, "listeners:\n"+fmt.Sprintf(web, port, 100)+chat)
	e = ev.expect("rebind", "web", fmt.Sprintf("port 0 -> %d", port))
	moved := getListener(t, d.unix, "web")
	if moved.GetId() != e.GetListenerId() || moved.GetId() == first.GetId() || !moved.GetStatus().GetDeclared() {
		t.Fatalf("web after the rebind: %v (event %v)", moved, e)
	}
	echoes(t, fmt.Sprintf("127.0.0.1:%d", port))
	if c, err := net.Dial("tcp", oldAddr); err == nil {
		c.Close()
		t.Fatalf("the old address %s still answers", oldAddr)
	}

	// An entry removed: closed, with its listener_closed event.
	chatID := getListener(t, d.unix, "chat").GetId()
	writeAtomic(t, file, "listeners:\n"+fmt.Sprintf(web, port, 100))
	ev.expect("close", "chat", "not in file")
	if _, err := d.unix.GetListener(testContext(t), &listenerdv1.GetListenerRequest{Id: "chat"}); err == nil {
		t.Fatal("chat still there")
	}
	testkit.Eventually(t, func() bool {
		_, err := d.unix.GetListener(testContext(t), &listenerdv1.GetListenerRequest{Id: chatID})
		return err != nil
	}, "chat's listener gone")

	// A malformed edit leaves the listeners alone and says where.
	writeAtomic(t, file, "listeners:\n  web: {spec: {port: 1, limits: {maxConection: 5}}}\n")
	ev.expect("failed", "", "listeners.yaml:2:15: listener \"web\": spec: unknown field \"maxConection\"")
	if l := getListener(t, d.unix, "web"); l.GetId() != moved.GetId() || l.GetStatus().GetState() != listenerdv1.State_STATE_LISTENING {
		t.Fatalf("web after a malformed file: %v", l)
	}
	echoes(t, fmt.Sprintf("127.0.0.1:%d", port))

	// A change through the API is put back at the next reconcile.
	writeAtomic(t, file, "listeners:\n"+fmt.Sprintf(web, port, 100))
	if _, err := d.unix.UpdateListener(testContext(t), &listenerdv1.UpdateListenerRequest{
		Listener:   &listenerdv1.Listener{Id: "web", Spec: &listenerdv1.ListenerSpec{Limits: &listenerdv1.Limits{MaxConnections: new(uint32(5))}}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"spec.limits.max_connections"}},
	}); err != nil {
		t.Fatal(err)
	}
	// The file fixed above is the one last made true, so rewriting it as it
	// is puts the API's change back.
	e = ev.expect("update", "web", "put back (changed through the API): max_connections 5 -> 100")
	if e.GetListenerId() != moved.GetId() || getListener(t, d.unix, "web").GetSpec().GetLimits().GetMaxConnections() != 100 {
		t.Fatalf("web not put back: %v", getListener(t, d.unix, "web"))
	}
	if !strings.Contains(d.log.String(), "declared listener reconciled") {
		t.Error("no log line of the reconcile")
	}
}

func TestDeclaredListenersMalformedAtStart(t *testing.T) {
	file := filepath.Join(t.TempDir(), "l.yaml")
	writeAtomic(t, file, "listeners:\n  web: {spec: {port: 99999}}\n")
	dir := testkit.ShortDir(t)
	err := Run(testContext(t), Config{Socket: filepath.Join(dir, "s.sock"), Ephemeral: true, Listeners: file,
		History: 1000, MaxWatchers: 8})
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "l.yaml:2:15: listener \"web\": spec.port: 99999 is out of range") {
		t.Fatalf("Run: %v; want a configuration error at the file's place", err)
	}
}

// A Kubernetes ConfigMap volume updates by swapping a symbolic link: the
// file's name never changes, only where ..data points.
func TestDeclaredListenersConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	version := func(name, text string) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, name), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "listeners.yaml"), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(name, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..v1", "listeners:\n  a: {spec: {}}\n")
	file := filepath.Join(dir, "listeners.yaml")
	if err := os.Symlink(filepath.Join("..data", "listeners.yaml"), file); err != nil {
		t.Fatal(err)
	}
	d := startRun(t, Config{Listeners: file, History: 1000, MaxWatchers: 8, ShutdownTimeout: guard})
	ev := watchAll(t, d.unix)
	ev.expect("create", "a", "")
	version("..v2", "listeners:\n  b: {spec: {}}\n")
	ev.expect("close", "a", "")
	ev.expect("create", "b", "")
}
