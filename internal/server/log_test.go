package server

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// TestAccessLogLevels: a change is logged at info, a read that succeeds
// at debug (health probes must not fill the log) and so is a watch its
// client ends, and a read that fails at info.
func TestAccessLogLevels(t *testing.T) {
	d := startRun(t, Config{})
	ctx := testContext(t)
	if _, err := d.unix.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: "web", Spec: &listenerdv1.ListenerSpec{}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.unix.GetListener(ctx, &listenerdv1.GetListenerRequest{Id: "web"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.unix.GetListener(ctx, &listenerdv1.GetListenerRequest{Id: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("get of a missing listener: %v", err)
	}
	// A watch the client ends is a watch that went well: debug too.
	wctx, cancel := context.WithCancel(ctx)
	st, err := d.unix.WatchEvents(wctx, &listenerdv1.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil { // the head: the watch is open
		t.Fatal(err)
	}
	cancel()
	// Nothing announces the handler's end but its log line.
	testkit.Eventually(t, func() bool { return strings.Contains(d.log.String(), "grpc.method=WatchEvents") }, "the cancelled watch to be logged")
	levels := map[string][]string{} // method code -> levels
	for _, line := range strings.Split(d.log.String(), "\n") {
		if !strings.Contains(line, `msg="finished call"`) {
			continue
		}
		level, method, code := field(line, "level"), field(line, "grpc.method"), field(line, "grpc.code")
		levels[method+" "+code] = append(levels[method+" "+code], level)
	}
	for call, want := range map[string]string{
		"CreateListener OK":    "INFO",
		"GetListener OK":       "DEBUG",
		"GetListener NotFound": "INFO",
		"WatchEvents Canceled": "DEBUG",
	} {
		if got := levels[call]; len(got) != 1 || got[0] != want {
			t.Errorf("%s logged at %v, want [%s]", call, got, want)
		}
	}
}

// field returns the value of key in a slog text line.
func field(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

// TestServeConnectionLogAtInfo: with debug off, a ServeConnection that
// ends well leaves no line (it would be at debug), and one that fails is
// logged at its level, with the middleware's fields and its own start.
func TestServeConnectionLogAtInfo(t *testing.T) {
	d := startRunAt(t, Config{Ephemeral: true}, slog.LevelInfo)
	addr := createStream(t, d, "s")
	h := attach(t, d.unix, "s", 4)
	before := time.Now().Truncate(time.Second)

	c := testkit.Dial(t, addr)
	s := h.take()
	_ = c.CloseWrite()
	recvUntilEnd(t, s)
	if err := s.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_End{End: &listenerdv1.End{}}}); err != nil {
		t.Fatal(err)
	}
	if m, err := s.Recv(); err != nil || m.GetClosed() == nil {
		t.Fatalf("closed: %v, %v", m, err)
	}
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("after closed: %v, want the call's end", err)
	}

	bad, err := d.unix.ServeConnection(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Send(&listenerdv1.ServeConnectionRequest{Kind: &listenerdv1.ServeConnectionRequest_End{End: &listenerdv1.End{}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a first message other than take: %v, want InvalidArgument", err)
	}

	var lines []string
	for _, line := range strings.Split(d.log.String(), "\n") {
		if strings.Contains(line, `msg="finished call"`) && field(line, "grpc.method") == "ServeConnection" {
			lines = append(lines, line)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("ServeConnection lines %q, want the failed call's only", lines)
	}
	l := lines[0]
	if field(l, "level") != "INFO" || field(l, "grpc.code") != "InvalidArgument" || field(l, "grpc.service") != "listenerd.v1.ListenerService" ||
		field(l, "grpc.method_type") != "bidi_stream" || field(l, "grpc.time_ms") == "" || !strings.Contains(l, "grpc.error=") {
		t.Fatalf("the failed call's line: %s", l)
	}
	if st, err := time.Parse(time.RFC3339, field(l, "grpc.start_time")); err != nil || st.Before(before) || st.After(time.Now()) {
		t.Fatalf("grpc.start_time %q (%v), want the call's start", field(l, "grpc.start_time"), err)
	}
}
