package server

import (
	"context"
	"strings"
	"testing"

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
