package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/listenerd/listenerd/internal/testkit"
)

// sendNotify sends state to $NOTIFY_SOCKET as the test, to mark a point in
// the stream of datagrams: those sent before it come out before it.
func sendNotify(state string) error {
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: os.Getenv("NOTIFY_SOCKET"), Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(state))
	return err
}

// Under systemd's watchdog (WatchdogSec=, played here: $WATCHDOG_USEC and
// a notify socket the test reads) the daemon says READY=1 with its status,
// pings WATCHDOG=1 while it serves, and at shutdown stops pinging before it
// says STOPPING=1.
func TestWatchdogNotify(t *testing.T) {
	ch := playNotify(t)
	t.Setenv("WATCHDOG_USEC", "100000") // a ping every 50 ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	sock := filepath.Join(testkit.ShortDir(t), "run", "listenerd.sock")
	log := &testkit.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Socket: sock, Ephemeral: true, Log: slog.New(slog.NewTextHandler(log, nil))})
	}()
	if m := nextNotify(t, ch); m.State != "READY=1\nSTATUS=serving on unix://"+sock {
		t.Fatalf("first datagram %q, want READY=1 and the status", m.State)
	}
	for range 3 {
		if m := nextNotify(t, ch); m.State != "WATCHDOG=1" {
			t.Fatalf("datagram %q while serving, want WATCHDOG=1", m.State)
		}
	}
	cancel()
	var states []string
	for m := nextNotify(t, ch); ; m = nextNotify(t, ch) {
		if strings.HasPrefix(m.State, "STOPPING=1\n") {
			break
		}
		states = append(states, m.State)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(guard):
		t.Fatal("Run did not return after cancel")
	}
	if err := sendNotify("TEST=end"); err != nil {
		t.Fatal(err)
	}
	for m := nextNotify(t, ch); m.State != "TEST=end"; m = nextNotify(t, ch) {
		t.Errorf("datagram %q after STOPPING=1", m.State)
	}
	for _, s := range states {
		if s != "WATCHDOG=1" {
			t.Errorf("datagram %q between the cancel and STOPPING=1", s)
		}
	}
	if !strings.Contains(log.String(), "systemd watchdog on") {
		t.Errorf("log does not say the watchdog is on:\n%s", log.String())
	}
}

// A daemon that is not healthy sends no ping; pings resume when it is.
func TestWatchdogUnhealthy(t *testing.T) {
	ch := playNotify(t)
	checks := 0
	w := startWatchdog(slog.New(slog.DiscardHandler), 2*time.Millisecond, func() error {
		checks++
		if err := sendNotify("TEST=check" + strconv.Itoa(checks)); err != nil {
			return err // the test fails: it waits for this datagram
		}
		if checks <= 3 {
			return errors.New("sick")
		}
		return nil
	})
	for i := 1; i <= 4; i++ {
		if m := nextNotify(t, ch); m.State != "TEST=check"+strconv.Itoa(i) {
			t.Fatalf("datagram %q, want check %d (no ping while unhealthy)", m.State, i)
		}
	}
	if m := nextNotify(t, ch); m.State != "WATCHDOG=1" {
		t.Fatalf("datagram %q once healthy, want WATCHDOG=1", m.State)
	}
	w.Stop()
}

// The watchdog is on when systemd watches this process: $WATCHDOG_PID
// this one or unset, or, after an upgrade, the old one.
func TestWatchdogInterval(t *testing.T) {
	me, other := strconv.Itoa(os.Getpid()), strconv.Itoa(os.Getpid()+1)
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		usec, pid string
		upgraded  bool
		want      time.Duration
	}{
		{"", "", false, 0},
		{"2000000", "", false, 2 * time.Second},
		{"2000000", me, false, 2 * time.Second},
		{"2000000", other, false, 0},
		{"2000000", other, true, 2 * time.Second},
		{"soon", "", false, 0},
		{"0", "", false, 0},
	} {
		t.Setenv("WATCHDOG_USEC", tc.usec)
		t.Setenv("WATCHDOG_PID", tc.pid)
		if got := watchdogInterval(log, tc.upgraded); got != tc.want {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q upgraded %v: %v, want %v", tc.usec, tc.pid, tc.upgraded, got, tc.want)
		}
	}
}
