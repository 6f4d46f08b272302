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
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	dir, err := os.MkdirTemp("", "ldc")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "run", "l.sock")
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
