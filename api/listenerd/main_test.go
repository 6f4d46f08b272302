package listenerd_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/listenerd/listenerd/api/listenerd"
	"github.com/listenerd/listenerd/internal/server"
)

// TestMain runs a daemon in this process, on a socket of its own named by
// LISTENERD_SOCKET, so that the tests and the examples reach it as any
// program would: listenerd.Dial(listenerd.Options{}). The daemon's
// goroutines end with it; goleak checks nothing else is left.
func TestMain(m *testing.M) {
	if ref := os.Getenv("LISTENERD_TEST_HANDLER"); ref != "" {
		handlerProcess(ref) // a child of a test: see handover_test.go
		return
	}
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	if code == 0 && fdsBefore >= 0 {
		// Every descriptor the daemon and the tests opened (sockets
		// handed over included) is closed once the daemon has stopped.
		deadline := time.Now().Add(30 * time.Second)
		for countFDs() > fdsBefore && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := countFDs(); n > fdsBefore {
			fmt.Fprintf(os.Stderr, "descriptors: %d open after the daemon stopped, %d before it started\n", n, fdsBefore)
			code = 1
		}
	}
	os.Exit(code)
}

// fdsBefore is how many descriptors were open before the daemon started;
// -1 where that cannot be read.
var fdsBefore = -1

func countFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

func run(m *testing.M) (int, error) {
	dir, err := os.MkdirTemp("", "ldc")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	testDir = dir
	sock := filepath.Join(dir, "run", "l.sock")
	fdsBefore = countFDs()
	os.Setenv(listenerd.SocketEnv, sock)
	ctx, cancel := context.WithCancel(context.Background())
	serving := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- server.Run(ctx, server.Config{Socket: sock, Ephemeral: true, History: server.DefaultHistory,
			HistoryData: server.DefaultHistoryData, WatcherLag: server.DefaultWatcherLag, MaxWatchers: server.DefaultMaxWatchers,
			Log: slog.New(slog.DiscardHandler), Stdout: signalWriter{serving}})
	}()
	select {
	case <-serving:
	case err := <-done:
		cancel()
		return 0, fmt.Errorf("daemon: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		return 0, fmt.Errorf("daemon did not start")
	}
	code := m.Run()
	cancel()
	if err := <-done; err != nil {
		return code, fmt.Errorf("daemon: %v", err)
	}
	return code, nil
}

// testDir holds the daemon's socket directory.
var testDir string

// signalWriter closes its channel at the daemon's "serving on" line.
type signalWriter struct{ ch chan struct{} }

func (w signalWriter) Write(p []byte) (int, error) {
	select {
	case <-w.ch:
	default:
		close(w.ch)
	}
	return len(p), nil
}
