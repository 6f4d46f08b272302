package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestQuick is the CI smoke of the bench (issue 7, item 4): it builds the
// bench, runs it with --quick end to end (daemon, bare Go servers, Node if
// present, separate load processes) and checks that it printed a row for
// every case. It asserts nothing about speed; its deadlines are only there
// so that a wedged run fails instead of hanging.
func TestQuick(t *testing.T) {
	deadline := time.Now().Add(8 * time.Minute)
	if d, ok := t.Deadline(); ok && d.Add(-30*time.Second).Before(deadline) {
		deadline = d.Add(-30 * time.Second)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()

	bin := filepath.Join(t.TempDir(), "bench")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.CommandContext(ctx, "go", append(args, ".")...)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	var stdout, stderr bytes.Buffer
	run := exec.CommandContext(ctx, bin, "--quick", "--timeout", time.Until(deadline).Round(time.Second).String())
	run.Stdout, run.Stderr = &stdout, &stderr
	// A race-enabled process sleeps a second at exit by default; the bench
	// starts dozens of them.
	run.Env = append(os.Environ(), "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	run.WaitDelay = 10 * time.Second
	if err := run.Run(); err != nil {
		t.Fatalf("bench --quick: %v\nstdout:\n%s\nstderr:\n%s", err, &stdout, &stderr)
	}
	out := stdout.String()
	for _, key := range metricOrder {
		row := regexp.MustCompile(`(?m)^` + key + `\s+\S.*\s(yes|NO|-)\s`)
		if !row.MatchString(out) {
			t.Errorf("no row for case %s in the table", key)
		}
	}
	if !regexp.MustCompile(`(?m)^server CPU`).MatchString(out) {
		t.Error("no server CPU table")
	}
	if _, err := exec.LookPath("node"); err == nil {
		// Node's forwarder fills case c's node column.
		if !regexp.MustCompile(`(?m)^c\s.*MiB/s\s+[0-9.]+\s+[0-9.]+\s+[0-9.]+\s`).MatchString(out) {
			t.Error("node is installed, but case c has no Node forwarder figure")
		}
	}
	if !regexp.MustCompile(`(?m)^\s+[0-9.]+ µs on a bare grpc-go server`).MatchString(out) {
		t.Error("no bare grpc-go server RPC in case f's notes")
	}
	if !regexp.MustCompile(`(?m)^\s+[0-9.]+ µs against [0-9.]+ µs for net.Listen\+Close, [0-9.]+x`).MatchString(out) {
		t.Error("no state-saved figure in case f's notes")
	}
	if !regexp.MustCompile(`(?m)^h, i: listenerd's server CPU is the daemon's and the Go stream handler's together \(medians\): h daemon [0-9.]+ \+ handler [0-9.]+ ms/GiB`).MatchString(out) {
		t.Error("no split of the stream cases' CPU between the daemon and the handler")
	}
	if t.Failed() {
		t.Logf("stdout:\n%s\nstderr:\n%s", out, &stderr)
	}
}

// TestScan checks the watchers' protowire scan against messages built with
// the generated code.
func TestScan(t *testing.T) {
	closed := func(l string) *listenerdv1.Event {
		return &listenerdv1.Event{Sequence: 7, ListenerId: l, BootId: "b",
			Kind: &listenerdv1.Event_ConnectionClosed{ConnectionClosed: &listenerdv1.ConnectionClosed{ConnectionId: l + ".1"}}}
	}
	opened := &listenerdv1.Event{Sequence: 6, ListenerId: "ln-1",
		Kind: &listenerdv1.Event_ConnectionOpened{ConnectionOpened: &listenerdv1.ConnectionOpened{ConnectionId: "ln-1.1"}}}
	resp := &listenerdv1.WatchEventsResponse{HeadSequence: 9, BootId: "b",
		Events: []*listenerdv1.Event{opened, closed("ln-1"), closed("ln-2"), closed("ln-1")}}
	data, err := proto.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	b := batch{listener: "ln-1"}
	if err := (scanCodec{}).Unmarshal(data, &b); err != nil {
		t.Fatal(err)
	}
	if b.events != 4 || b.closed != 2 {
		t.Errorf("scan: %d events, %d closed; want 4 and 2", b.events, b.closed)
	}
	if err := b.scan(data[:10]); err == nil { // inside the first event
		t.Error("scan of a truncated message: no error")
	}
}

// TestPerfCSV checks the reading of perf stat's CSV output (-x ,) and the
// list of system calls per connection made from it.
func TestPerfCSV(t *testing.T) {
	path := filepath.Join(t.TempDir(), "perf.csv")
	data := "# started on Thu Dec  3 06:51:19 2026\n\n" +
		"8000,,context-switches,1300477,100.00,,\n" +
		"68000,,raw_syscalls:sys_enter,1300477,100.00,,\n" +
		"20000,,syscalls:sys_enter_setsockopt,1300477,100.00,,\n" +
		"4000,,syscalls:sys_enter_shutdown,1300477,100.00,,\n" +
		"12000,,syscalls:sys_enter_read,1300477,100.00,,\n" +
		"12000,,syscalls:sys_enter_accept4,1300477,100.00,,\n" +
		"100,,syscalls:sys_enter_madvise,1300477,100.00,,\n" +
		"<not counted>,,syscalls:sys_enter_kill,0,100.00,,\n"
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	counts, err := readPerfCSV(path)
	if err != nil {
		t.Fatal(err)
	}
	if counts["context-switches"] != 8000 || counts["raw_syscalls:sys_enter"] != 68000 {
		t.Errorf("counts %v", counts)
	}
	if _, ok := counts["syscalls:sys_enter_kill"]; ok {
		t.Error("an event not counted has a count")
	}
	// Most first, ties by name; under one in ten connections left out.
	if got, want := syscallsPer(counts, 4000), " setsockopt 5.00 accept4 3.00 read 3.00 shutdown 1.00"; got != want {
		t.Errorf("syscallsPer = %q, want %q", got, want)
	}
	if err := os.WriteFile(path, []byte("<not counted>,,raw_syscalls:sys_enter,0,100.00,,\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readPerfCSV(path); err == nil {
		t.Error("no error for output without a count of system calls")
	}
}
