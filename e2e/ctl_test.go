package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// The real ctl binary: every command, every output format, the errors.

// ctlIn runs ctl against socket with stdin, for commands that read it
// (connect) or a socket with no daemon.
func ctlIn(t *testing.T, socket, stdin string, args ...string) result {
	t.Helper()
	return runBin(t, ctlBin, []string{"LISTENERD_SOCKET=" + socket}, stdin, args...)
}

// rest reads a stream's remaining lines until ctl exits by itself, and
// returns them with its exit error.
func (s *stream) rest() ([]string, error) {
	s.t.Helper()
	var lines []string
	timeout := time.After(guard)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				<-s.done
				return lines, s.err
			}
			lines = append(lines, l)
		case <-timeout:
			s.t.Fatalf("ctl did not end; lines %q, stderr %s", lines, s.errb.String())
		}
	}
}

// table splits ctl's table output into rows of fields.
func table(out string) [][]string {
	var rows [][]string
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		rows = append(rows, strings.Fields(l))
	}
	return rows
}

func dialEcho(t *testing.T, addr, msg string) net.Conn {
	t.Helper()
	c := dial(t, addr)
	if msg != "" {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func port(c net.Conn) string { return strconv.Itoa(c.LocalAddr().(*net.TCPAddr).Port) }

// listen --follow prints the seed's server log: the address, then
// CONNECTED:, DATA: (with --data), CLOSED: lines, and SERVER CLOSED when the
// listener closes, after which it exits 0 by itself.
func TestCtlListenFollow(t *testing.T) {
	d := startDaemon(t)
	s := d.ctlStream("listen", "--port", "0", "--mode", "echo", "--name", "chuck", "--follow", "--data")
	first := s.next()
	m := regexp.MustCompile(`^listening on (127\.0\.0\.1:\d+) \(id (ln-[0-9a-f]{8}), name chuck\)$`).FindStringSubmatch(first)
	if m == nil {
		t.Fatalf("first line %q", first)
	}
	addr, id := m[1], m[2]

	c := dialEcho(t, addr, "I am Chuck Norris!")
	p := port(c)
	if got := s.next(); got != "CONNECTED: 127.0.0.1:"+p {
		t.Errorf("got %q, want CONNECTED: 127.0.0.1:%s", got, p)
	}
	if got := s.next(); got != `DATA: 127.0.0.1:`+p+`: "I am Chuck Norris!"` {
		t.Errorf("data line %q", got)
	}
	c.Close()
	if got := s.next(); !strings.HasPrefix(got, "CLOSED: 127.0.0.1:"+p+" (peer closed, in 18 B, out 18 B, ") {
		t.Errorf("closed line %q", got)
	}
	d.mustCtl("close", id)
	rest, err := s.rest()
	if err != nil || len(rest) != 1 || rest[0] != "SERVER CLOSED (0 drained, 0 destroyed)" {
		t.Fatalf("after close: lines %q, exit %v, stderr %s", rest, err, s.errb.String())
	}

	// -o json: the listener, then one event a line; Ctrl-C exits 0.
	j := d.ctlStream("listen", "--port", "0", "-o", "json", "--follow")
	var l listenerdv1.Listener
	unmarshalLine(t, j.next(), &l)
	c = dialEcho(t, l.GetStatus().GetBoundAddress(), "")
	var ev listenerdv1.Event
	unmarshalLine(t, j.next(), &ev)
	if ev.GetListenerStarted() == nil { // the follow replays from before the create
		t.Errorf("json follow: first event %v, want listener_started", &ev)
	}
	unmarshalLine(t, j.next(), &ev)
	if ev.GetConnectionOpened().GetTuple().GetRemotePort() != uint32(c.LocalAddr().(*net.TCPAddr).Port) {
		t.Errorf("json follow: %v", &ev)
	}
	if err := j.interrupt(); err != nil {
		t.Errorf("Ctrl-C: %v", err)
	}
	// The listener stays after ctl stops following.
	if out := d.mustCtl("get", l.GetId()); !strings.Contains(out, "state:            listening") {
		t.Errorf("after Ctrl-C: %s", out)
	}
}

// ls, get and conns in every format, limit and kick, against one listener
// holding one connection.
func TestCtlOutputFormats(t *testing.T) {
	d := startDaemon(t)
	l := listenJSON(t, d, "--port", "0", "--mode", "echo", "--name", "web", "--max-connections", "5")
	id, addr := l.GetId(), l.GetStatus().GetBoundAddress()
	c := dialEcho(t, addr, "hello")
	connID := id + ".1"

	// ls
	rows := table(d.mustCtl("ls"))
	if strings.Join(rows[0], " ") != "ID NAME ADDRESS STATE ACTIVE ACCEPTED REJECTED MAX MODE" {
		t.Errorf("ls header %q", rows[0])
	}
	if len(rows) != 2 || strings.Join(rows[1], " ") != id+" web "+addr+" listening 1 1 0 5 echo" {
		t.Errorf("ls rows %q", rows)
	}
	rows = table(d.mustCtl("ls", "-o", "wide"))
	if strings.Join(rows[0], " ") != "ID NAME ADDRESS STATE ACTIVE ACCEPTED REJECTED MAX MODE IN OUT CREATED" ||
		strings.Join(rows[1][:11], " ") != id+" web "+addr+" listening 1 1 0 5 echo 5 B" {
		t.Errorf("ls -o wide %q", rows)
	}
	if out := d.mustCtl("ls", "--no-headers"); !strings.HasPrefix(out, id+"  web") || strings.Count(out, "\n") != 1 {
		t.Errorf("ls --no-headers %q", out)
	}
	if out := d.mustCtl("ls", "-o", "wide", "--no-headers"); !strings.HasPrefix(out, id) || strings.Count(out, "\n") != 1 {
		t.Errorf("ls -o wide --no-headers %q", out)
	}
	// ls -o json is one document: the ListListenersResponse.
	var list listenerdv1.ListListenersResponse
	out := d.mustCtl("ls", "-o", "json")
	unmarshalLine(t, strings.TrimSpace(out), &list)
	if len(list.GetListeners()) != 1 || list.GetListeners()[0].GetId() != id ||
		list.GetListeners()[0].GetStatus().GetActiveConnections() != 1 || strings.Count(out, "\n") != 1 {
		t.Errorf("ls -o json %q", out)
	}
	checkJSONTool(t, out, `"rejectedConnections": "0"`)
	var got listenerdv1.Listener

	// get
	out = d.mustCtl("get", "web")
	for _, want := range []string{"id:               " + id, "name:             web", "state:            listening",
		"address:          " + addr, "mode:             echo", "max connections:  5", "active:           1", "bytes in:         5 B"} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("get: no %q in\n%s", want, out)
		}
	}
	// -o wide shows the same lines (the age in "created" moves on).
	noAge := regexp.MustCompile(`\(.* ago\)`)
	if wide := d.mustCtl("get", "web", "-o", "wide"); noAge.ReplaceAllString(wide, "") != noAge.ReplaceAllString(out, "") {
		t.Errorf("get -o wide differs from text:\n%s", wide)
	}
	unmarshalLine(t, strings.TrimSpace(d.mustCtl("get", id, "-o", "json")), &got)
	if got.GetName() != "web" || got.GetSpec().GetLimits().GetMaxConnections() != 5 {
		t.Errorf("get -o json: %v", &got)
	}

	// conns
	rows = table(d.mustCtl("conns", "web"))
	if strings.Join(rows[0], " ") != "ID REMOTE LOCAL AGE IN OUT" || len(rows) != 2 ||
		rows[1][0] != connID || rows[1][1] != "127.0.0.1:"+port(c) || rows[1][2] != addr {
		t.Errorf("conns %q", rows)
	}
	rows = table(d.mustCtl("conns", "web", "-o", "wide"))
	if strings.Join(rows[0], " ") != "ID REMOTE LOCAL AGE IN OUT FAMILY OPENED" || !strings.Contains(strings.Join(rows[1], " "), " IPv4 ") {
		t.Errorf("conns -o wide %q", rows)
	}
	if out := d.mustCtl("conns", "web", "--no-headers"); !strings.HasPrefix(out, connID+"  127.0.0.1:"+port(c)) {
		t.Errorf("conns --no-headers %q", out)
	}
	var conns listenerdv1.ListConnectionsResponse
	unmarshalLine(t, strings.TrimSpace(d.mustCtl("conns", "web", "-o", "json")), &conns)
	if len(conns.GetConnections()) != 1 {
		t.Fatalf("conns -o json: %v", &conns)
	}
	conn := conns.GetConnections()[0]
	if conn.GetId() != connID || conn.GetBytesIn() != 5 || conn.GetTuple().GetFamily() != listenerdv1.Family_FAMILY_IPV4 {
		t.Errorf("conns -o json: %v", conn)
	}

	// limit: text, json, the newer limits, and they hold.
	if out := d.mustCtl("limit", "web", "--max-connections", "10", "--idle-timeout", "1m"); out !=
		"limits of "+id+": max-connections=10 overflow=reject idle-timeout=1m max-lifetime=none\n" {
		t.Errorf("limit: %q", out)
	}
	if out := d.mustCtl("limit", "web", "--accept-rate", "50", "--accept-burst", "100", "--max-per-source", "3"); out !=
		"limits of "+id+": max-connections=10 overflow=reject idle-timeout=1m max-lifetime=none accept-rate=50/s accept-burst=100 max-per-source=3\n" {
		t.Errorf("limit admission: %q", out)
	}
	unmarshalLine(t, strings.TrimSpace(d.mustCtl("limit", id, "--unlimited", "--accept-rate", "0", "--max-per-source", "0", "-o", "json")), &got)
	if lim := got.GetSpec().GetLimits(); lim.MaxConnections != nil || lim.GetAcceptRate() != 0 || lim.MaxConnectionsPerSource != nil ||
		lim.GetAcceptBurst() != 100 || lim.GetIdleTimeout().AsDuration() != time.Minute {
		t.Errorf("limit -o json: %v", lim)
	}

	// kick: a FIN, then an RST; -o json prints the request.
	if out := d.mustCtl("kick", connID); out != "kicked "+connID+"\n" {
		t.Errorf("kick: %q", out)
	}
	if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("kicked client read %d, %v; want EOF", n, err)
	}
	c2 := dialEcho(t, addr, "x")
	if out := d.mustCtl("kick", id+".2", "--reset", "-o", "json"); out != `{"id":"`+id+`.2","reset":true}`+"\n" {
		t.Errorf("kick --reset -o json: %q", out)
	}
	if _, err := c2.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("reset client read: %v; want ECONNRESET", err)
	}
	c3 := dialEcho(t, addr, "x")
	if out := d.mustCtl("kick", id+".3", "--reset"); out != "reset "+id+".3\n" {
		t.Errorf("kick --reset: %q", out)
	}
	c3.Close()
}

// watch: text, wide (with the time), json lines, --since, --kind, --data.
func TestCtlWatch(t *testing.T) {
	d := startDaemon(t)
	l := listenJSON(t, d, "--port", "0", "--mode", "echo", "--name", "web")
	id, addr := l.GetId(), l.GetStatus().GetBoundAddress()
	since := head(t, d)
	after := strconv.FormatUint(since, 10)
	text := d.ctlStream("watch", "-v", "--since", after, "web")
	wide := d.ctlStream("watch", "-v", "-o", "wide", "--since", after, "--kind", "connection_closed")
	js := d.ctlStream("watch", "-v", "-o", "json", "--since", after, id)
	data := d.ctlStream("watch", "-v", "--since", after, "--data", "--data-max", "4", "--kind", "connection_opened", id)
	// Once registered (-v says so), nothing is missed, and the data of the
	// connection below is recorded for the --data watcher.
	for _, s := range []*stream{text, wide, js, data} {
		waitStderr(t, s, "watching after seq="+after)
	}

	c := dialEcho(t, addr, "I am Chuck Norris!")
	p := port(c)
	c.Close()

	opened := regexp.MustCompile(`^seq=(\d+) ` + id + ` connection_opened c=` + id + `\.1 127\.0\.0\.1:` + p + ` -> ` + regexp.QuoteMeta(addr) + `$`)
	line := text.next()
	if m := opened.FindStringSubmatch(line); m == nil || m[1] != strconv.FormatUint(since+1, 10) {
		t.Errorf("watch --since %d: first line %q", since, line)
	}
	if line = text.next(); !regexp.MustCompile(`^seq=\d+ ` + id + ` connection_closed c=` + id + `\.1 127\.0\.0\.1:` + p + ` reason=peer_closed in=18 out=18 duration=\S+$`).MatchString(line) {
		t.Errorf("watch closed line %q", line)
	}
	if line = wide.next(); !regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d\d\d seq=\d+ ` + id + ` connection_closed `).MatchString(line) {
		t.Errorf("watch -o wide --kind connection_closed: %q", line)
	}
	var ev listenerdv1.Event
	unmarshalLine(t, js.next(), &ev)
	if ev.GetSequence() != since+1 || ev.GetConnectionOpened().GetConnectionId() != id+".1" || ev.GetBootId() == "" {
		t.Errorf("watch -o json: %v", &ev)
	}
	// --data: the opened event and the bytes each way, cut to 4 bytes.
	if line = data.next(); !opened.MatchString(line) {
		t.Errorf("watch --data first line %q", line)
	}
	if line = data.next(); !strings.HasSuffix(line, " connection_data c="+id+`.1 in len=18 data="I am"`) {
		t.Errorf("watch --data in: %q", line)
	}
	if line = data.next(); !strings.HasSuffix(line, " connection_data c="+id+`.1 out len=18 data="I am"`) {
		t.Errorf("watch --data out: %q", line)
	}
	for _, s := range []*stream{text, wide, js, data} {
		if err := s.interrupt(); err != nil {
			t.Errorf("Ctrl-C: %v (stderr %s)", err, s.errb.String())
		}
	}
}

// close: --drain with a connection left to drain, --force, --wait for the
// listener_closed event, in text and json.
func TestCtlClose(t *testing.T) {
	d := startDaemon(t)

	// --drain, then --force --wait on the draining listener (by id: the
	// name was given up at the first close).
	l := listenJSON(t, d, "--port", "0", "--mode", "echo", "--name", "web")
	c := dialEcho(t, l.GetStatus().GetBoundAddress(), "x")
	if out := d.mustCtl("close", "web", "--drain", "1m"); out != "closed "+l.GetId()+" (draining 1 connection)\n" {
		t.Errorf("close --drain: %q", out)
	}
	// The reply may come before or after the force destroyed the
	// connection; the closed event says what happened.
	if out := d.mustCtl("close", l.GetId(), "--force", "--wait"); !strings.HasPrefix(out, "closed "+l.GetId()) ||
		!strings.HasSuffix(out, "\n"+l.GetId()+" closed: 0 connections drained, 1 destroyed\n") || strings.Count(out, "\n") != 2 {
		t.Errorf("close --force --wait: %q", out)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("a destroyed connection is still open")
	}
	if r := d.ctl("get", l.GetId()); r.code != 3 {
		t.Errorf("get after close --wait: exit %d (the listener should be gone)", r.code)
	}

	// --drain --wait: the client leaves by itself and is counted drained.
	l = listenJSON(t, d, "--port", "0", "--name", "web") // the name is free again
	c = dialEcho(t, l.GetStatus().GetBoundAddress(), "")
	waitActive(t, d, l.GetId(), 1)
	s := d.ctlStream("close", "web", "--drain", "1m", "--wait", "-o", "json")
	var closed listenerdv1.Listener
	unmarshalLine(t, s.next(), &closed)
	if closed.GetStatus().GetState() != listenerdv1.State_STATE_DRAINING {
		t.Errorf("close -o json: %v", &closed)
	}
	c.Close()
	lines, err := s.rest()
	var ev listenerdv1.Event
	if err != nil || len(lines) != 1 {
		t.Fatalf("close --wait -o json: lines %q, exit %v, stderr %s", lines, err, s.errb.String())
	}
	unmarshalLine(t, lines[0], &ev)
	if lc := ev.GetListenerClosed(); lc == nil || lc.GetDrained() != 1 || lc.GetDestroyed() != 0 || ev.GetListenerId() != l.GetId() {
		t.Errorf("close --wait event: %v", &ev)
	}

	// --force on an idle listener; --drain 0s.
	l = listenJSON(t, d, "--port", "0")
	if out := d.mustCtl("close", l.GetId(), "--force"); out != "closed "+l.GetId()+"\n" {
		t.Errorf("close --force: %q", out)
	}
	l = listenJSON(t, d, "--port", "0")
	unmarshalLine(t, strings.TrimSpace(d.mustCtl("close", l.GetId(), "--drain", "0s", "-o", "json")), &closed)
	if closed.GetId() != l.GetId() || closed.GetStatus().GetCloseTime() == nil {
		t.Errorf("close --drain 0s -o json: %v", &closed)
	}
}

// waitActive waits until a listener has n open connections.
func waitActive(t *testing.T, d *daemon, id string, n uint64) {
	t.Helper()
	ctx := testContext(t)
	eventually(t, func() bool {
		resp, err := d.client.GetListener(ctx, &listenerdv1.GetListenerRequest{Id: id})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetListener().GetStatus().GetActiveConnections() == n
	}, fmt.Sprintf("listener %s to have %d connections", id, n))
}

// rebind: a listener restored FAILED because the test holds its port binds
// again once the port is free.
func TestCtlRebindFailedListener(t *testing.T) {
	dir := testkit.ShortDir(t)
	d := startDaemonIn(t, dir)
	fixed := strconv.Itoa(freePort(t))
	l := listenJSON(t, d, "--port", fixed, "--mode", "echo", "--name", "web")
	d.stop()

	taken, err := net.Listen("tcp", "127.0.0.1:"+fixed)
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	d2 := startDaemonIn(t, dir)
	rows := table(d2.mustCtl("ls", "--no-headers"))
	if len(rows) != 1 || rows[0][0] != l.GetId() || rows[0][3] != "failed" {
		t.Fatalf("ls after restart: %q", rows)
	}
	if out := d2.mustCtl("get", "web"); !strings.Contains(out, "state:            failed") || !strings.Contains(out, "address already in use") {
		t.Errorf("get a failed listener:\n%s", out)
	}
	// Still taken: exit 1, one line with the OS error.
	r := d2.ctl("rebind", "web")
	if r.code != 1 || !strings.Contains(r.stderr, "address already in use") || strings.Count(r.stderr, "\n") != 1 || r.stdout != "" {
		t.Errorf("rebind while taken: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	// Completion offers it for rebind.
	if out := d2.mustCtl("__complete", "rebind", ""); !strings.Contains(out, l.GetId()+"\t") || !strings.Contains(out, "web\t") {
		t.Errorf("rebind completion: %q", out)
	}

	taken.Close()
	if out := d2.mustCtl("rebind", "web"); out != "listening on 127.0.0.1:"+fixed+" (id "+l.GetId()+", rebound)\n" {
		t.Errorf("rebind: %q", out)
	}
	dialEcho(t, "127.0.0.1:"+fixed, "back")
	// Rebinding a listener that is listening is refused.
	r = d2.ctl("rebind", l.GetId(), "-o", "json")
	if r.code != 1 || strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, "ctl: ") {
		t.Errorf("rebind a listening listener: exit %d, stderr %q", r.code, r.stderr)
	}
}

// connect reproduces the seed's client session against an echo listener:
// the reply on stdout, CONNECTED TO: and the five-tuple on stderr.
func TestCtlConnectSeedSession(t *testing.T) {
	d := startDaemon(t)
	l := listenJSON(t, d, "--port", "0", "--mode", "echo")
	addr := l.GetStatus().GetBoundAddress()
	_, p, _ := net.SplitHostPort(addr)

	r := d.ctl("connect", addr, "--send", "I am Chuck Norris!", "--once")
	if r.code != 0 || r.stdout != "I am Chuck Norris!" {
		t.Fatalf("connect: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	errLines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(errLines) != 3 || errLines[0] != "CONNECTED TO: "+addr ||
		!regexp.MustCompile(`^remoteAddress=127\.0\.0\.1 remotePort=`+p+` remoteFamily=IPv4 localAddress=127\.0\.0\.1 localPort=\d+$`).MatchString(errLines[1]) ||
		errLines[2] != "connection closed" {
		t.Errorf("connect stderr %q", r.stderr)
	}

	// stdin, half-closed at its end: everything comes back.
	r = ctlIn(t, d.socket, "line one\nline two\n", "connect", addr)
	if r.code != 0 || r.stdout != "line one\nline two\n" {
		t.Errorf("connect from stdin: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	// A host name is looked up first.
	r = d.ctl("connect", "localhost:"+p, "--send", "hi", "--once")
	if r.code != 0 || r.stdout != "hi" || !strings.HasPrefix(r.stderr, "resolved localhost to ") {
		t.Errorf("connect localhost: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	// The daemon saw both sessions.
	var got listenerdv1.Listener
	unmarshalLine(t, strings.TrimSpace(d.mustCtl("get", l.GetId(), "-o", "json")), &got)
	if got.GetStatus().GetAcceptedConnections() < 3 {
		t.Errorf("accepted %d", got.GetStatus().GetAcceptedConnections())
	}
	// Refused: exit 1, one line.
	closedPort := strconv.Itoa(freePort(t))
	r = d.ctl("connect", "127.0.0.1:"+closedPort, "--send", "x")
	if r.code != 1 || r.stderr != "ctl: cannot connect to 127.0.0.1:"+closedPort+": connection refused\n" {
		t.Errorf("connect refused: exit %d, stderr %q", r.code, r.stderr)
	}
}

// Errors: one line on stderr starting "ctl: ", nothing on stdout, and the
// exit code of the kind of mistake.
func TestCtlErrors(t *testing.T) {
	d := startDaemon(t)
	l := listenJSON(t, d, "--port", "0", "--name", "web")
	_, takenPort, _ := net.SplitHostPort(l.GetStatus().GetBoundAddress())

	check := func(r result, code int, args []string, wants ...string) {
		t.Helper()
		if r.code != code || r.stdout != "" || !strings.HasPrefix(r.stderr, "ctl: ") || strings.Count(r.stderr, "\n") != 1 ||
			strings.Contains(r.stderr, "rpc error") || strings.Contains(r.stderr, "goroutine") {
			t.Errorf("ctl %q: exit %d (want %d), stdout %q, stderr %q", args, r.code, code, r.stdout, r.stderr)
			return
		}
		for _, w := range wants {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("ctl %q: stderr %q does not say %q", args, r.stderr, w)
			}
		}
	}
	for _, tc := range []struct {
		args  []string
		code  int
		wants []string
	}{
		// 3: not found.
		{[]string{"get", "nope"}, 3, []string{`"nope"`}},
		{[]string{"close", "nope"}, 3, nil},
		{[]string{"close", "nope", "--wait"}, 3, nil},
		{[]string{"conns", "nope"}, 3, nil},
		{[]string{"limit", "nope", "--max-connections", "1"}, 3, nil},
		{[]string{"rebind", "nope"}, 3, nil},
		{[]string{"kick", l.GetId() + ".99"}, 3, nil},
		// 2: usage, or the daemon's INVALID_ARGUMENT naming the field.
		{[]string{"listen", "--port", "70000"}, 2, []string{"invalid input", "port"}},
		{[]string{"listen", "--host", "256.1.1.1"}, 2, []string{"--host"}},
		{[]string{"listen", "--allow", "10.0.0.0/99"}, 2, []string{"allow"}},
		{[]string{"listen", "--mode", "bogus"}, 2, []string{"--mode"}},
		{[]string{"listen", "--port", "x"}, 2, []string{"--port", "whole number"}},
		{[]string{"listen", "--data"}, 2, []string{"--follow"}},
		{[]string{"listen", "--max-per-source", "1", "--accept-rate", "-1"}, 2, []string{"--accept-rate"}},
		{[]string{"ls", "--bogus"}, 2, []string{"--bogus", "--help"}},
		{[]string{"-o", "yaml", "ls"}, 2, []string{"yaml"}},
		{[]string{"get"}, 2, []string{"missing"}},
		{[]string{"get", "a", "b"}, 2, []string{"too many"}},
		{[]string{"limit", "web"}, 2, []string{"nothing to change"}},
		{[]string{"limit", "web", "--max-connections", "1", "--unlimited"}, 2, nil},
		{[]string{"close", "web", "--drain", "1s", "--force"}, 2, nil},
		{[]string{"close", "web", "--drain", "soon"}, 2, []string{"duration"}},
		{[]string{"kick", "not-a-conn"}, 2, []string{"invalid input"}},
		{[]string{"watch", "--kind", "bogus"}, 2, []string{"event kind"}},
		{[]string{"watch", "--data-max", "0"}, 2, nil},
		{[]string{"connect", "nohostport"}, 2, []string{"HOST:PORT"}},
		{[]string{"rebind"}, 2, nil},
		// 1: anything else, said plainly.
		{[]string{"listen", "--name", "web"}, 1, []string{"web"}},
		{[]string{"listen", "--port", takenPort}, 1, []string{"address already in use"}},
		{[]string{"rebind", "web"}, 1, nil},
	} {
		check(d.ctl(tc.args...), tc.code, tc.args, tc.wants...)
	}

	// 4: no daemon, for every command that needs one.
	gone := filepath.Join(testkit.ShortDir(t), "run", "listenerd.sock")
	for _, args := range [][]string{{"ls"}, {"get", "web"}, {"listen"}, {"limit", "web", "--unlimited"},
		{"close", "web"}, {"close", "web", "--wait"}, {"conns", "web"}, {"kick", "ln-00000000.1"}, {"rebind", "web"}} {
		r := ctlIn(t, gone, "", args...)
		check(r, 4, args, "cannot reach listenerd at "+gone, "is the daemon running?", "go run ./daemon")
	}
	r := ctlIn(t, gone, "", "--socket", gone+".other", "ls")
	check(r, 4, []string{"--socket"}, gone+".other")
}

// Every command teaches itself: --help has examples, completion works
// against the real daemon.
func TestCtlHelpAndCompletion(t *testing.T) {
	d := startDaemon(t)
	l := listenJSON(t, d, "--port", "0", "--name", "web")
	for _, cmd := range [][]string{{}, {"listen"}, {"ls"}, {"get"}, {"limit"}, {"close"}, {"watch"}, {"conns"},
		{"kick"}, {"rebind"}, {"connect"}, {"completion"}, {"completion", "bash"}, {"completion", "zsh"},
		{"completion", "fish"}, {"completion", "powershell"}, {"help"}} {
		out := d.mustCtl(append(cmd, "--help")...)
		if !strings.Contains(out, "Examples:\n") || !strings.Contains(out, "Usage:\n") {
			t.Errorf("ctl %s --help has no example:\n%s", strings.Join(cmd, " "), out)
		}
	}
	if out := d.mustCtl("__complete", "get", ""); !strings.Contains(out, l.GetId()+"\t") || !strings.Contains(out, "web\t") ||
		!strings.HasSuffix(out, ":4\n") {
		t.Errorf("complete get: %q", out)
	}
	if out := d.mustCtl("__complete", "close", "w"); out != "web\t"+l.GetStatus().GetBoundAddress()+" listening\n:4\n" {
		t.Errorf("complete close w: %q", out)
	}
	if out := d.mustCtl("completion", "bash"); !strings.Contains(out, "__start_ctl") {
		t.Error("completion bash printed no script")
	}
}
