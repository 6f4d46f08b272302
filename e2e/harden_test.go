package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// forwardSpec is a forward listener's spec, to upstream with a connect
// timeout.
func forwardSpec(upstream string, timeout time.Duration) *listenerdv1.ListenerSpec {
	return &listenerdv1.ListenerSpec{Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Forward{
		Forward: &listenerdv1.ForwardHandler{Upstream: upstream, ConnectTimeout: durationpb.New(timeout)}}}}
}

// A forward whose upstream never answers closes the connection with
// UPSTREAM_FAILED and the dial's error (seen through ctl watch), and a
// connect timeout past the maximum is refused by name.
func TestForwardBlackHoleUpstream(t *testing.T) {
	d := startDaemon(t, "--ephemeral")
	_, err := d.client.CreateListener(testContext(t), &listenerdv1.CreateListenerRequest{Spec: forwardSpec("127.0.0.1:9", 5*time.Minute+time.Second)})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "spec.handler.forward.connect_timeout") {
		t.Fatalf("create with connect_timeout 5m1s: %v; want INVALID_ARGUMENT naming spec.handler.forward.connect_timeout", err)
	}
	resp, err := d.client.CreateListener(testContext(t), &listenerdv1.CreateListenerRequest{Spec: forwardSpec(testkit.BlackHole(t), 200*time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	l := resp.GetListener()
	w := d.ctlStream("watch", "-o", "json", "--since", "0", "--kind", "connection_closed", l.GetId())
	dial(t, l.GetStatus().GetBoundAddress())
	var ev listenerdv1.Event
	unmarshalLine(t, w.next(), &ev)
	cc := ev.GetConnectionClosed()
	if cc.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_UPSTREAM_FAILED || !strings.Contains(cc.GetError(), "connect timeout") {
		t.Fatalf("closed event %v; want UPSTREAM_FAILED with the dial's error", &ev)
	}
}

// Quiet acceptances, now said: an ACL prefix with host bits is refused
// with the network it probably meant, and a FAILED listener that asked
// for port 0 shows "host:*", not a port 0 it would seem bound to.
func TestHostBitsAndFailedPortZero(t *testing.T) {
	dir := testkit.ShortDir(t)
	d := startDaemonIn(t, dir)
	r := d.ctl("listen", "--port", "0", "--allow", "10.1.2.3/8")
	if r.code != 2 || !strings.Contains(r.stderr, "--allow: ") || !strings.Contains(r.stderr, "did you mean the network 10.0.0.0/8") {
		t.Fatalf("listen --allow 10.1.2.3/8: exit %d, stderr %q; want exit 2 naming 10.0.0.0/8", r.code, r.stderr)
	}
	d.mustCtl("listen", "--port", "0", "--name", "anyport")
	d.stop()
	// Restarted under a policy without port 0, it comes back FAILED.
	d = startDaemonIn(t, dir, "--allow-ports", "8000")
	ls := d.mustCtl("ls")
	if !strings.Contains(ls, "127.0.0.1:*") || !strings.Contains(ls, "failed") || strings.Contains(ls, "127.0.0.1:0 ") {
		t.Fatalf("ls of a FAILED port-0 listener:\n%s", ls)
	}
	if get := d.mustCtl("get", "anyport"); !strings.Contains(get, "address:          127.0.0.1:*\n") {
		t.Fatalf("get of a FAILED port-0 listener:\n%s", get)
	}
}

// A half-open connection whose peer vanished is closed once keepalive
// finds it gone, with no idle timeout set: the client ends its side, then
// its socket disappears without a word (a short TCP_LINGER2), and the
// daemon's next keepalive probe is answered with a reset.
func TestHalfOpenPeerGone(t *testing.T) {
	d := startDaemon(t, "--ephemeral")
	l := listenJSON(t, d, "--port", "0", "--mode", "echo", "--allow-half-open", "--keepalive", "1s")
	w := d.ctlStream("watch", "-o", "json", "--since", "0", "--kind", "connection_half_closed", "--kind", "connection_closed", l.GetId())
	c := dial(t, l.GetStatus().GetBoundAddress())
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	var ev listenerdv1.Event
	unmarshalLine(t, w.next(), &ev)
	if ev.GetConnectionHalfClosed() == nil {
		t.Fatalf("first event %v, want connection_half_closed", &ev)
	}
	testkit.Vanish(t, c)
	unmarshalLine(t, w.next(), &ev)
	cc := ev.GetConnectionClosed()
	if cc.GetReason() != listenerdv1.CloseReason_CLOSE_REASON_RESET || !strings.Contains(cc.GetError(), "half-open connection lost") {
		t.Fatalf("closed event %v; want RESET, half-open connection lost", &ev)
	}
}

// The daemon never takes a socket that answers: a foreign program's live
// socket at its path is left alone and the daemon exits 1 naming it; with
// the lock file gone (a temp cleaner), a second daemon refuses the first
// one's live socket; and a daemon that exits leaves a second daemon's
// socket in place.
func TestSocketOwnership(t *testing.T) {
	dir := testkit.ShortDir(t)
	if err := os.Mkdir(filepath.Join(dir, "run"), 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "run", "listenerd.sock")
	foreign, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	r := runBin(t, daemonBin, nil, "", "--socket", path, "--ephemeral")
	if want := fmt.Sprintf("%s is in use: pid %d", path, os.Getpid()); r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Fatalf("daemon over a live foreign socket: exit %d, stderr %q; want exit 1 and %q", r.code, r.stderr, want)
	}
	if c, err := net.Dial("unix", path); err != nil {
		t.Fatalf("the foreign socket no longer answers: %v", err)
	} else {
		c.Close()
	}
	foreign.Close()

	first := startDaemonIn(t, dir, "--ephemeral")
	if err := os.Remove(first.socket + ".lock"); err != nil {
		t.Fatal(err)
	}
	r = runBin(t, daemonBin, nil, "", "--socket", first.socket, "--ephemeral")
	if want := fmt.Sprintf("is in use: pid %d (listenerd", first.cmd.Process.Pid); r.code != 1 || !strings.Contains(r.stderr, want) {
		t.Fatalf("second daemon over the first one's live socket: exit %d, stderr %q; want exit 1 and %q", r.code, r.stderr, want)
	}
	// The cleaner takes the socket too: a second daemon serves there.
	for _, f := range []string{first.socket, first.socket + ".lock"} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	second := startDaemonIn(t, dir, "--ephemeral")
	first.stop()
	if _, err := os.Lstat(second.socket); err != nil {
		t.Fatalf("the first daemon's exit removed the second one's socket: %v", err)
	}
	second.mustCtl("ls")
}

// The event history holds to its byte budget under data watches: a data
// watcher that never reads and one that does, echo connections with
// data, and the history's bytes (metrics) never past --history-bytes,
// which lets the oldest events go long before --history's count: a resume
// from the start is OUT_OF_RANGE naming the oldest held.
func TestHistoryByteBudget(t *testing.T) {
	const budget = 1 << 20
	d := startDaemon(t, "--ephemeral", "--history-bytes", strconv.Itoa(budget), "--metrics", "127.0.0.1:0")
	url := metricsURL(t, d)
	l := listenJSON(t, d, "--port", "0", "--mode", "echo", "--backlog", "1024")
	stuck := listenerdv1.NewListenerServiceClient(testkit.DialGRPCUnix(t, d.socket))
	if _, err := stuck.WatchEvents(testContext(t), &listenerdv1.WatchEventsRequest{IncludeData: true, DataMaxBytes: 4096}); err != nil {
		t.Fatal(err)
	}
	reader := d.ctlStream("watch", "--data", "--data-max", "4096", "-v", "--since", "0")
	waitStderr(t, reader, "watching after seq=")
	go func() {
		for range reader.lines { // read as it comes
		}
	}()
	msg := strings.Repeat("x", 1000)
	evicted := false
	for i := 0; i < 5000 && !evicted; i++ {
		c := dialEcho(t, l.GetStatus().GetBoundAddress(), msg)
		c.Close()
		if i%50 != 49 {
			continue
		}
		m := scrapeMetrics(t, url)
		held, _ := m.find("listenerd_history_bytes")
		limit, _ := m.find("listenerd_history_bytes_limit")
		events, _ := m.find("listenerd_history_events")
		published, _ := m.find("listenerd_events_published_total")
		if limit != budget || held > limit {
			t.Fatalf("after %d connections: history holds %.0f bytes, limit %.0f; want at most %d", i+1, held, limit, budget)
		}
		evicted = events < published
	}
	if !evicted {
		t.Fatal("5,000 echo connections with data never filled a history of 1 MiB")
	}
	s, err := d.client.WatchEvents(testContext(t), &listenerdv1.WatchEventsRequest{AfterSequence: ptr(uint64(0))})
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.OutOfRange || !strings.Contains(err.Error(), "history holds") {
		t.Fatalf("resume from the start: %v; want OUT_OF_RANGE naming what the history holds", err)
	}
}

// slowClients opens n connections to addr that never finish a TLS
// handshake (a record header, then nothing), from the sources given in
// turn, and keeps them open until the test ends.
func slowClients(t *testing.T, addr string, n int, sources ...string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(sources[i%len(sources)])}, Timeout: guard}
			c, err := d.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			t.Cleanup(func() { c.Close() })
			_, _ = c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00}) // a ClientHello of 512 bytes is coming
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("slow client: %v", err)
	}
}

// Token holders get in while the TCP API is flooded with connections
// that never authenticate: 3,000 held open from the token holder's own
// address and 250 others, and more coming from 250 more while ctl calls.
func TestTokenHoldersServedDuringFlood(t *testing.T) {
	dir := testkit.ShortDir(t)
	ca, cert, key, _ := tlsFiles(t, dir)
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("e2e-token-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d, addr := startTCPDaemon(t, "--api-listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key, "--token-file", token, "--ephemeral")
	others := make([]string, 250)
	for i := range others {
		others[i] = "127.0.1." + strconv.Itoa(i+1)
	}
	slowClients(t, addr, 1500, "127.0.0.1")
	slowClients(t, addr, 1500, others...)
	stop := make(chan struct{})
	flooding := make(chan struct{})
	go func() { // more, as fast as they come, until the calls are done
		defer close(flooding)
		var held [1000]net.Conn // the newest, so that this process keeps descriptors for ctl
		defer func() {
			for _, c := range held {
				if c != nil {
					c.Close()
				}
			}
		}()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.2." + strconv.Itoa(1+i%250))}, Timeout: guard}
			if c, err := d.Dial("tcp", addr); err == nil {
				_, _ = c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00})
				if old := held[i%len(held)]; old != nil {
					old.Close()
				}
				held[i%len(held)] = c
			}
		}
	}()
	for i := range 5 {
		// --timeout only bounds the test; the call is served at once.
		if r := d.ctl("--api", addr, "--ca", ca, "--token-file", token, "--timeout", guard.String(), "ls"); r.code != 0 {
			close(stop)
			<-flooding
			t.Fatalf("ctl ls %d with the token during the flood: exit %d, %s", i, r.code, r.stderr)
		}
	}
	close(stop)
	<-flooding
	if !strings.Contains(d.stderr.String(), "closed a TCP API connection without credentials") {
		t.Fatalf("no connection without credentials was closed: was there a flood?\n%s", d.stderr.String())
	}
}

// Under an open-file limit of 64, 100 connections piling up on a
// listener take the descriptors the listeners may have and no more: the
// rest are rejected at once, ctl ls answers, and a create fails
// RESOURCE_EXHAUSTED naming the descriptor limit; once connections go,
// creates work again.
func TestDescriptorReserveKeepsTheAPI(t *testing.T) {
	if _, err := exec.LookPath("prlimit"); err != nil {
		t.Skip("prlimit not installed")
	}
	d := startDaemonWrapped(t, testkit.ShortDir(t), []string{"prlimit", "--nofile=64:64"}, "--ephemeral")
	if !strings.Contains(d.stderr.String(), "open_files=64 fd_reserve=32 max_connections=32") {
		t.Fatalf("the start line does not show the limit, the reserve and the cap:\n%s", d.stderr.String())
	}
	l := listenJSON(t, d, "--port", "0", "--backlog", "1024")
	var conns []*net.TCPConn
	for range 100 {
		conns = append(conns, dial(t, l.GetStatus().GetBoundAddress()))
	}
	// The listener holds two of the 32: 30 are served, 70 rejected.
	var got *listenerdv1.Listener
	eventually(t, func() bool {
		resp, err := d.client.GetListener(testContext(t), &listenerdv1.GetListenerRequest{Id: l.GetId()})
		if err != nil {
			t.Fatal(err)
		}
		got = resp.GetListener()
		st := got.GetStatus()
		return st.GetActiveConnections()+st.GetRejectedConnections() == 100
	}, "every connection to be served or rejected")
	if st := got.GetStatus(); st.GetActiveConnections() != 30 {
		t.Fatalf("%d connections served, %d rejected; want 30 served", st.GetActiveConnections(), st.GetRejectedConnections())
	}
	if out := d.mustCtl("ls"); !strings.Contains(out, l.GetId()) {
		t.Fatalf("ls:\n%s", out)
	}
	if out := d.mustCtl("status"); !strings.Contains(out, "open-file limit:  64\n") || !strings.Contains(out, "fd reserve:       32 ") ||
		!strings.Contains(out, "descriptors held: 32 of 32 ") || !strings.Contains(out, "max connections:  32\n") {
		t.Fatalf("status:\n%s", out)
	}
	r := d.ctl("listen", "--port", "0")
	if r.code != 1 || !strings.Contains(r.stderr, "limit reached") || !strings.Contains(r.stderr, "open-file limit (RLIMIT_NOFILE) of 64") {
		t.Fatalf("listen with no descriptor free: exit %d, stderr %q", r.code, r.stderr)
	}
	_, err := d.client.CreateListener(testContext(t), &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{}})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("create with no descriptor free: %v; want RESOURCE_EXHAUSTED", err)
	}
	for _, c := range conns[:10] {
		c.Close()
	}
	eventually(t, func() bool {
		_, err := d.client.CreateListener(testContext(t), &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{}})
		return err == nil
	}, "a create to work once connections have gone")
}
