package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

var metricsLine = regexp.MustCompile(`listenerd serving metrics on (http://\S+/metrics)`)

// metricsURL is the endpoint the daemon announced on stdout (before it
// served the API, so it is there once the daemon is healthy).
func metricsURL(t *testing.T, d *daemon) string {
	t.Helper()
	m := metricsLine.FindStringSubmatch(d.stderr.String())
	if m == nil {
		t.Fatalf("no metrics line in the daemon's output:\n%s", d.stderr.String())
	}
	return m[1]
}

// scrape is one GET of the endpoint: series (name and labels, as printed)
// to values.
type scrape map[string]float64

func scrapeMetrics(t *testing.T, url string) scrape {
	t.Helper()
	client := &http.Client{Timeout: guard, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s %q\n%s", url, resp.Status, resp.Header.Get("Content-Type"), b)
	}
	s := scrape{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		s[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return s
}

// find returns the value of the one series of name whose labels include
// every k="v" of labels, and whether there is one.
func (s scrape) find(name string, labels ...string) (float64, bool) {
next:
	for series, v := range s {
		if series != name && !strings.HasPrefix(series, name+"{") {
			continue
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if !strings.Contains(series, fmt.Sprintf(`%s=%q`, labels[i], labels[i+1])) {
				continue next
			}
		}
		return v, true
	}
	return 0, false
}

func (s scrape) expect(t *testing.T, want float64, name string, labels ...string) {
	t.Helper()
	got, ok := s.find(name, labels...)
	if !ok {
		t.Fatalf("no series %s%v", name, labels)
	}
	if got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// scrapeUntil scrapes until cond holds: the duration histogram is fed just
// after the closed event, so a scrape may briefly lag the event stream.
func scrapeUntil(t *testing.T, url, what string, cond func(scrape) bool) scrape {
	t.Helper()
	var s scrape
	eventually(t, func() bool {
		s = scrapeMetrics(t, url)
		return cond(s)
	}, "the metrics to show "+what)
	return s
}

// waitEvent reads the listener's events after seq until one of kind comes,
// and returns its sequence.
func waitEvent(t *testing.T, d *daemon, id string, after uint64, kind listenerdv1.EventKind) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	s, err := d.client.WatchEvents(ctx, &listenerdv1.WatchEventsRequest{
		ListenerIds: []string{id}, Kinds: []listenerdv1.EventKind{kind}, AfterSequence: &after})
	if err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			t.Fatalf("waiting for %v on %s: %v", kind, id, err)
		}
		if evs := resp.GetEvents(); len(evs) > 0 {
			return evs[0].GetSequence()
		}
	}
}

func head(t *testing.T, d *daemon) uint64 {
	t.Helper()
	resp, err := d.client.ListListeners(testContext(t), &listenerdv1.ListListenersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetSequence()
}

// curl on the metrics endpoint shows the per-listener series move as
// connections come and go, and the gRPC server's metrics.
func TestMetricsEndpointFollowsConnections(t *testing.T) {
	d := startDaemon(t, "--metrics", "127.0.0.1:0")
	url := metricsURL(t, d)
	l := listenJSON(t, d, "--port", "0", "--mode", "echo", "--name", "web", "--max-connections", "1")
	id, addr := l.GetId(), l.GetStatus().GetBoundAddress()
	who := []string{"listener", id, "name", "web"}
	seq := head(t, d)

	s := scrapeMetrics(t, url)
	s.expect(t, 1, "listenerd_listener_info", "listener", id, "address", addr, "mode", "echo", "state", "listening")
	s.expect(t, 0, "listenerd_listener_active_connections", who...)
	s.expect(t, 0, "listenerd_listener_accepted_connections_total", who...)
	s.expect(t, 1, "listenerd_listener_max_connections", who...)
	s.expect(t, 0, "listenerd_connection_duration_seconds_count", who...)
	s.expect(t, 1, "grpc_server_handled_total", "grpc_method", "CreateListener", "grpc_code", "OK")
	s.expect(t, 0, "grpc_server_handled_total", "grpc_method", "CreateListener", "grpc_code", "NotFound")
	s.expect(t, 1, "listenerd_build_info", "goversion", runtime.Version()) // built by this test's toolchain

	// A client comes: active 1, its bytes each way.
	c := dial(t, addr)
	msg := "I am Chuck Norris!"
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}
	// The echo's bytes are counted once its write returns, which may be
	// just after the client read them.
	s = scrapeUntil(t, url, "the bytes echoed", func(s scrape) bool {
		n, _ := s.find("listenerd_listener_bytes_total", append(who, "direction", "out")...)
		return n == float64(len(msg))
	})
	s.expect(t, 1, "listenerd_listener_active_connections", who...)
	s.expect(t, 1, "listenerd_listener_accepted_connections_total", who...)
	s.expect(t, float64(len(msg)), "listenerd_listener_bytes_total", append(who, "direction", "in")...)
	s.expect(t, float64(len(msg)), "listenerd_listener_bytes_total", append(who, "direction", "out")...)

	// A second one is over the limit: rejected, by reason.
	dial(t, addr)
	seq = waitEvent(t, d, id, seq, listenerdv1.EventKind_EVENT_KIND_CONNECTION_REJECTED)
	s = scrapeMetrics(t, url)
	s.expect(t, 1, "listenerd_listener_rejected_connections_total", append(who, "reason", "max_connections")...)
	s.expect(t, 0, "listenerd_listener_rejected_connections_total", append(who, "reason", "denied_by_acl")...)
	s.expect(t, 1, "listenerd_listener_active_connections", who...)

	// The client goes: active 0, one duration observed.
	c.Close()
	waitEvent(t, d, id, seq, listenerdv1.EventKind_EVENT_KIND_CONNECTION_CLOSED)
	s = scrapeUntil(t, url, "the closed connection's duration", func(s scrape) bool {
		n, _ := s.find("listenerd_connection_duration_seconds_count", who...)
		return n == 1
	})
	s.expect(t, 0, "listenerd_listener_active_connections", who...)
	s.expect(t, 1, "listenerd_connection_duration_seconds_bucket", append(who, "le", "+Inf")...)
	if sum, _ := s.find("listenerd_connection_duration_seconds_sum", who...); sum <= 0 {
		t.Errorf("duration sum %v", sum)
	}

	// A watcher shows in the watcher gauge.
	w := d.ctlStream("watch", "-v")
	waitStderr(t, w, "watching from now")
	scrapeUntil(t, url, "one watcher", func(s scrape) bool { n, _ := s.find("listenerd_watchers"); return n == 1 })
	if err := w.interrupt(); err != nil {
		t.Fatalf("watch: %v", err)
	}

	// Closed and gone: its series go with it.
	d.mustCtl("close", "web", "--force", "--wait")
	scrapeUntil(t, url, "no series of the closed listener", func(s scrape) bool {
		_, ok := s.find("listenerd_listener_active_connections", "listener", id)
		return !ok
	})
	s = scrapeMetrics(t, url)
	if _, ok := s.find("listenerd_connection_duration_seconds_count", "listener", id); ok {
		t.Error("the duration histogram of a closed listener is still served")
	}
	s.expect(t, 1, "grpc_server_handled_total", "grpc_method", "CloseListener", "grpc_code", "OK")
}

// waitStderr waits until a ctl stream has written want on stderr.
func waitStderr(t *testing.T, s *stream, want string) {
	t.Helper()
	// The stream's stderr is logged if the test fails.
	eventually(t, func() bool { return strings.Contains(s.errb.String(), want) }, fmt.Sprintf("ctl to say %q on stderr", want))
}

// The endpoint is loopback-only unless asked: the daemon refuses to start
// and says why.
func TestMetricsRefusesRemoteAddress(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0"} {
		r := runDaemonOnce(t, "--metrics", addr)
		if r.code != 2 || !strings.Contains(r.stderr, "--metrics-allow-remote") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("--metrics %s: exit %d, stderr %q", addr, r.code, r.stderr)
		}
	}
}

// A size the daemon cannot allocate is refused at start, naming the flag,
// instead of panicking.
func TestDaemonRefusesHugeHistory(t *testing.T) {
	r := runDaemonOnce(t, "--history", "9223372036854775807")
	if r.code != 2 || !strings.Contains(r.stderr, "--history") || strings.Contains(r.stderr, "panic") {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
}

// runDaemonOnce runs the daemon in a fresh directory for a start that must
// fail, and returns what it printed.
func runDaemonOnce(t *testing.T, args ...string) result {
	t.Helper()
	dir := testkit.ShortDir(t)
	return runBin(t, daemonBin, nil, "", append([]string{"--socket", filepath.Join(dir, "s.sock"), "--state-dir", filepath.Join(dir, "state")}, args...)...)
}
