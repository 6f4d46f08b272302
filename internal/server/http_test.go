package server

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// httpClient is a client of the test's own, its connections closed at
// the end of the test.
func httpClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// startWeb runs a daemon serving the HTTP API on loopback with a token
// (--http refuses to serve without authentication), which do and openSSE
// then send.
func startWeb(t *testing.T) *testDaemon {
	t.Helper()
	token := "web-" + rand.Text()
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startRun(t, Config{Ephemeral: true, HTTP: "127.0.0.1:0", API: APIConfig{TokenFile: file}})
	d.token = token
	return d
}

// bearer is the Authorization header carrying tok.
func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

// withToken sets the daemon's token as req's bearer token, unless h names
// an Authorization of its own (a nil one: none), then h's headers.
func (d *testDaemon) withToken(req *http.Request, h http.Header) {
	if _, own := h["Authorization"]; !own && d.token != "" {
		req.Header.Set("Authorization", "Bearer "+d.token)
	}
	for k, v := range h {
		if v != nil {
			req.Header[k] = v
		}
	}
}

// noToken is a header sending no Authorization at all.
var noToken = http.Header{"Authorization": nil}

// httpCall is one request and what came back.
type httpCall struct {
	method, path, body string
	header             http.Header // added to the daemon's token; see withToken
	host               string      // the Host header, when not the address
}

type httpReply struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

// do sends c to the daemon's HTTP API with the daemon's token unless c
// says otherwise; a body is sent as JSON unless the call sets its own
// Content-Type.
func (d *testDaemon) do(t *testing.T, cl *http.Client, c httpCall) httpReply {
	t.Helper()
	var body io.Reader
	if c.body != "" {
		body = strings.NewReader(c.body)
	}
	req, err := http.NewRequestWithContext(testContext(t), c.method, d.http+c.path, body)
	if err != nil {
		t.Fatal(err)
	}
	if c.body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	d.withToken(req, c.header)
	if c.host != "" {
		req.Host = c.host
	}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", c.method, c.path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := httpReply{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
	if err := json.Unmarshal(raw, &r.body); err != nil {
		t.Fatalf("%s %s: %d, not a JSON object: %q", c.method, c.path, resp.StatusCode, raw)
	}
	return r
}

// field walks r's JSON body by dotted path ("listener.status.state").
func (r httpReply) field(t *testing.T, path string) any {
	t.Helper()
	var v any = r.body
	for _, k := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("%s: no object at %q in %s", path, k, r.raw)
		}
		if v, ok = m[k]; !ok {
			t.Fatalf("%s: %q is absent from %s", path, k, r.raw)
		}
	}
	return v
}

// wantError checks an error reply: the HTTP status, the gRPC code and a
// message saying what.
func (r httpReply) wantError(t *testing.T, status, code int, says string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.raw)
	}
	if got := r.field(t, "code"); got != float64(code) {
		t.Fatalf("code %v, want %d: %s", got, code, r.raw)
	}
	if msg, _ := r.field(t, "message").(string); !strings.Contains(msg, says) {
		t.Fatalf("message %q does not say %q", msg, says)
	}
}

// TestHTTPListeners drives the listeners' life through HTTP/JSON: each
// call, its status for bad input, and what the daemon then holds.
func TestHTTPListeners(t *testing.T) {
	d := startWeb(t)
	cl := httpClient(t)
	ctx := testContext(t)

	r := d.do(t, cl, httpCall{method: "POST", path: "/v1/listeners", body: `{"name":"web","spec":{"port":0,"handler":{"echo":{}}}}`})
	if r.status != http.StatusOK {
		t.Fatalf("create: %d %s", r.status, r.raw)
	}
	id, _ := r.field(t, "listener.id").(string)
	addr, _ := r.field(t, "listener.status.boundAddress").(string)
	if id == "" || addr == "" {
		t.Fatalf("create: no id or address: %s", r.raw)
	}
	// Proto (snake_case) names are read as well as JSON ones.
	r = d.do(t, cl, httpCall{method: "POST", path: "/v1/listeners", body: `{"name":"snake","spec":{"port":0,"allow_half_open":true}}`})
	if r.status != http.StatusOK || r.field(t, "listener.spec.allowHalfOpen") != true {
		t.Fatalf("create with proto names: %d %s", r.status, r.raw)
	}
	// The listener really listens: a connection is echoed, and counted.
	c := testkit.Dial(t, addr)
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}

	r = d.do(t, cl, httpCall{method: "GET", path: "/v1/listeners"})
	if r.status != http.StatusOK {
		t.Fatalf("list: %d %s", r.status, r.raw)
	}
	list, _ := r.field(t, "listeners").([]any)
	if len(list) != 2 {
		t.Fatalf("list: %d listeners, want 2: %s", len(list), r.raw)
	}
	for _, l := range list {
		st := l.(map[string]any)["status"].(map[string]any)
		for _, k := range []string{"rejectedConnections", "bytesOut", "queuedConnections"} {
			if _, ok := st[k]; !ok { // zeros are written, not left out
				t.Fatalf("list: %s absent from %v", k, st)
			}
		}
	}

	r = d.do(t, cl, httpCall{method: "GET", path: "/v1/listeners/web"})
	if r.status != http.StatusOK || r.field(t, "listener.id") != id || r.field(t, "listener.status.acceptedConnections") != "1" {
		t.Fatalf("get by name: %d %s", r.status, r.raw)
	}

	// PATCH: the update mask is the body's fields.
	r = d.do(t, cl, httpCall{method: "PATCH", path: "/v1/listeners/" + id, body: `{"spec":{"limits":{"maxConnections":3}}}`})
	if r.status != http.StatusOK || r.field(t, "listener.spec.limits.maxConnections") != float64(3) {
		t.Fatalf("update: %d %s", r.status, r.raw)
	}
	got, err := d.unix.GetListener(ctx, &listenerdv1.GetListenerRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	if m := got.GetListener().GetSpec().GetLimits().MaxConnections; m == nil || *m != 3 {
		t.Fatalf("after PATCH the daemon holds max_connections %v, want 3", m)
	}
	if got.GetListener().GetSpec().GetHandler().GetEcho() == nil {
		t.Fatal("PATCH changed the handler, which the body did not name")
	}

	// Bad input, unknown ids and taken names get their statuses.
	d.do(t, cl, httpCall{method: "POST", path: "/v1/listeners", body: `{"spec":{"port":70000}}`}).wantError(t, 400, 3, "spec.port")
	d.do(t, cl, httpCall{method: "POST", path: "/v1/listeners", body: `{"spec":{"prot":1}}`}).wantError(t, 400, 3, "prot")
	d.do(t, cl, httpCall{method: "PATCH", path: "/v1/listeners/web", body: `{"spec":{"limits":{"idleTimeout":"-1s"}}}`}).wantError(t, 400, 3, "idle_timeout")
	d.do(t, cl, httpCall{method: "GET", path: "/v1/listeners/nope"}).wantError(t, 404, 5, "nope")
	d.do(t, cl, httpCall{method: "DELETE", path: "/v1/connections/" + id + ".999"}).wantError(t, 404, 5, id+".999")
	d.do(t, cl, httpCall{method: "POST", path: "/v1/listeners", body: `{"name":"web","spec":{"port":0}}`}).wantError(t, 409, 6, "web")

	r = d.do(t, cl, httpCall{method: "DELETE", path: "/v1/listeners/web?force=true"})
	// Closed at once; the echoed connection is being destroyed.
	if st := r.field(t, "listener.status.state"); r.status != http.StatusOK || st != "STATE_CLOSED" && st != "STATE_DRAINING" {
		t.Fatalf("close: %d %s", r.status, r.raw)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatal("the closed listener's port still accepts")
	}

	r = d.do(t, cl, httpCall{method: "GET", path: "/v1/status"})
	if r.status != http.StatusOK || r.field(t, "status.bootId") == "" {
		t.Fatalf("status: %d %s", r.status, r.raw)
	}
}

// TestHTTPBrowserSafety: a Host header naming another site (DNS
// rebinding), a body that is not JSON (a cross-site form) and a
// preflight are refused, nothing changes, and no CORS header is sent.
func TestHTTPBrowserSafety(t *testing.T) {
	d := startWeb(t)
	cl := httpClient(t)
	create := `{"name":"x","spec":{"port":0}}`

	for _, host := range []string{"evil.example", "evil.example:" + d.http[strings.LastIndex(d.http, ":")+1:], "127.0.0.1.nip.io"} {
		d.do(t, cl, httpCall{method: "GET", path: "/v1/listeners", host: host}).wantError(t, 403, 7, "Host")
		d.do(t, cl, httpCall{method: "POST", path: "/v1/listeners", body: create, host: host}).wantError(t, 403, 7, "Host")
	}
	for _, host := range []string{"localhost", "LOCALHOST:1", "127.0.0.2", "[::1]:80", "dash.localhost"} {
		if r := d.do(t, cl, httpCall{method: "GET", path: "/v1/listeners", host: host}); r.status != http.StatusOK {
			t.Fatalf("Host %q: %d %s", host, r.status, r.raw)
		}
	}
	for _, ct := range []string{"application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", ""} {
		h := http.Header{"Content-Type": {ct}}
		d.do(t, cl, httpCall{method: "POST", path: "/v1/listeners", body: create, header: h}).wantError(t, 415, 3, "application/json")
		// An empty POST is refused too: a page may send one across sites.
		d.do(t, cl, httpCall{method: "POST", path: "/v1/daemon:upgrade", header: h}).wantError(t, 415, 3, "application/json")
	}
	h := http.Header{"Content-Type": {"application/json; charset=utf-8"}, "Origin": {"http://evil.example"}}
	r := d.do(t, cl, httpCall{method: "GET", path: "/v1/listeners", header: h})
	if r.status != http.StatusOK || len(r.field(t, "listeners").([]any)) != 0 {
		t.Fatalf("a refused create made a listener: %s", r.raw)
	}
	pre := http.Header{"Origin": {"http://evil.example"}, "Access-Control-Request-Method": {"DELETE"}}
	preflight := d.do(t, cl, httpCall{method: "OPTIONS", path: "/v1/listeners/x", header: pre})
	for _, rep := range []httpReply{r, preflight} {
		for k := range rep.header {
			if strings.HasPrefix(k, "Access-Control-") {
				t.Fatalf("a CORS header was sent: %s: %v", k, rep.header)
			}
		}
	}
	if preflight.status < 400 {
		t.Fatal("a preflight was allowed")
	}
	// The body is capped.
	big := `{"name":"` + strings.Repeat("a", MaxRecvBytes) + `","spec":{}}`
	if r := d.do(t, cl, httpCall{method: "POST", path: "/v1/listeners", body: big}); r.status != http.StatusBadRequest {
		t.Fatalf("a body past %d bytes: %d %s", MaxRecvBytes, r.status, r.raw)
	}
}

// TestHTTPToken: every call needs the bearer token, on loopback too; the
// event stream also takes it as ?access_token= (EventSource cannot send
// headers), and nothing else does.
func TestHTTPToken(t *testing.T) {
	p := newPKI(t)
	d := startRun(t, Config{Ephemeral: true, HTTP: "127.0.0.1:0", API: APIConfig{TokenFile: p.tokenFile}})
	d.token = p.token
	cl := httpClient(t)

	d.do(t, cl, httpCall{method: "GET", path: "/v1/listeners", header: noToken}).wantError(t, 401, 16, "bearer token")
	d.do(t, cl, httpCall{method: "GET", path: "/v1/listeners", header: bearer(p.wrongToken)}).wantError(t, 401, 16, "invalid bearer token")
	d.do(t, cl, httpCall{method: "POST", path: "/v1/listeners", body: `{"spec":{"port":0}}`, header: noToken}).wantError(t, 401, 16, "bearer token")
	d.do(t, cl, httpCall{method: "GET", path: "/v1/listeners?access_token=" + url.QueryEscape(p.token), header: noToken}).wantError(t, 401, 16, "bearer token")
	d.do(t, cl, httpCall{method: "GET", path: "/v1/events", header: noToken}).wantError(t, 401, 16, "bearer token")
	d.do(t, cl, httpCall{method: "GET", path: "/v1/events?access_token=" + url.QueryEscape(p.wrongToken), header: noToken}).wantError(t, 401, 16, "invalid")
	d.do(t, cl, httpCall{method: "GET", path: "/v1/events", header: bearer(p.wrongToken)}).wantError(t, 401, 16, "invalid")
	if r := d.do(t, cl, httpCall{method: "POST", path: "/v1/listeners", body: `{"spec":{"port":0}}`}); r.status != http.StatusOK {
		t.Fatalf("with the token: %d %s", r.status, r.raw)
	}
	if strings.Contains(d.log.String(), p.token) {
		t.Fatal("the log shows the token")
	}
	for _, tc := range []struct {
		query  string
		header http.Header
	}{
		{"access_token=" + url.QueryEscape(p.token), noToken},
		{"", nil}, // the Authorization header
	} {
		s := d.openSSE(t, cl, d.http+"/v1/events?"+tc.query, "", tc.header)
		if h := s.next(t); h.event != "hello" {
			t.Fatalf("%q: first event %q, want hello", tc.query, h.event)
		}
		s.close()
	}
}

// TestHTTPClientCertOnly: --client-ca alone is authentication enough for
// --http on loopback (no token): a client with a certificate the CA
// signed is served, one without is refused 401.
func TestHTTPClientCertOnly(t *testing.T) {
	p := newPKI(t)
	d := startRun(t, Config{Ephemeral: true, HTTP: "127.0.0.1:0",
		API: APIConfig{TLSCert: p.serverCert, TLSKey: p.srvKey, ClientCA: p.caFile}})
	if !strings.HasPrefix(d.http, "https://") {
		t.Fatalf("HTTP API at %s, want https", d.http)
	}
	client := func(certs ...tls.Certificate) *http.Client {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.pool, Certificates: certs, MinVersion: tls.VersionTLS12}}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr}
	}
	if r := d.do(t, client(p.client), httpCall{method: "GET", path: "/v1/listeners"}); r.status != http.StatusOK {
		t.Fatalf("with the client certificate: %d %s", r.status, r.raw)
	}
	d.do(t, client(), httpCall{method: "GET", path: "/v1/listeners"}).wantError(t, 401, 16, "client certificate")
}

// TestOpenAPI: the document is served, is JSON, and names the routes.
func TestOpenAPI(t *testing.T) {
	d := startWeb(t)
	r := d.do(t, httpClient(t), httpCall{method: "GET", path: "/openapi.json"})
	if r.status != http.StatusOK || r.header.Get("Content-Type") != "application/json" {
		t.Fatalf("%d %v", r.status, r.header)
	}
	paths, _ := r.field(t, "paths").(map[string]any)
	for _, p := range []string{"/v1/listeners", "/v1/listeners/{id}", "/v1/listeners/{listener.id}", "/v1/status",
		"/v1/connections/{id}", "/v1/listeners/{id}:rebind", "/v1/daemon:upgrade"} {
		if _, ok := paths[p]; !ok {
			t.Fatalf("%s is not in the document's paths", p)
		}
	}
}

// sseEvent is one server-sent event.
type sseEvent struct {
	id, event, data string
}

// sseStream reads an event stream.
type sseStream struct {
	resp   *http.Response
	r      *bufio.Reader
	cancel context.CancelFunc
}

// openSSE opens url with the daemon's token (see withToken) and
// Last-Event-ID when lastID is set; the stream must answer 200
// text/event-stream.
func (d *testDaemon) openSSE(t *testing.T, cl *http.Client, url, lastID string, h http.Header) *sseStream {
	t.Helper()
	ctx, cancel := context.WithCancel(testContext(t))
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	d.withToken(req, h)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := cl.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	s := &sseStream{resp: resp, r: bufio.NewReader(resp.Body), cancel: cancel}
	t.Cleanup(s.close)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %v %s", url, resp.StatusCode, resp.Header, b)
	}
	return s
}

// next reads the next event, skipping comments.
func (s *sseStream) next(t *testing.T) sseEvent {
	t.Helper()
	var e sseEvent
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			t.Fatalf("event stream: %v (read %q)", err, line)
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			if e.event != "" || e.data != "" {
				return e
			}
			continue
		}
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimPrefix(v, " ")
		switch k {
		case "id":
			e.id = v
		case "event":
			e.event = v
		case "data":
			e.data += v
		case "": // a comment
		}
	}
}

// close disconnects.
func (s *sseStream) close() {
	s.cancel()
	s.resp.Body.Close()
}

// TestHTTPEventsResume: events come as SSE with their sequence as id; a
// client that disconnects, misses events and reconnects with
// Last-Event-ID gets each event exactly once across the two streams.
func TestHTTPEventsResume(t *testing.T) {
	d := startWeb(t)
	cl := httpClient(t)
	ctx := testContext(t)
	created, err := d.unix.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: "sse",
		Spec: &listenerdv1.ListenerSpec{Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Echo{Echo: &listenerdv1.EchoHandler{}}}}})
	if err != nil {
		t.Fatal(err)
	}
	addr := created.GetListener().GetStatus().GetBoundAddress()
	st, err := d.unix.GetDaemonStatus(ctx, &listenerdv1.GetDaemonStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	boot := st.GetStatus().GetBootId()

	// connect opens and closes n connections, one after the other.
	connect := func(n int) {
		for range n {
			c := testkit.Dial(t, addr)
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
	}
	// readUntil reads events until the n-th connection_closed, checking
	// each one's framing; it returns their ids.
	readUntil := func(s *sseStream, closes int) []uint64 {
		var ids []uint64
		for closes > 0 {
			e := s.next(t)
			seq, err := strconv.ParseUint(e.id, 10, 64)
			if err != nil {
				t.Fatalf("event %+v: id is not a sequence", e)
			}
			var ev struct {
				Sequence   string `json:"sequence"`
				ListenerID string `json:"listenerId"`
				BootID     string `json:"bootId"`
			}
			if err := json.Unmarshal([]byte(e.data), &ev); err != nil || ev.Sequence != e.id || ev.BootID != boot || ev.ListenerID != created.GetListener().GetId() {
				t.Fatalf("event %+v: data does not match (%v)", e, err)
			}
			if e.event == "CONNECTION_CLOSED" {
				closes--
			}
			ids = append(ids, seq)
		}
		return ids
	}

	url := d.http + "/v1/events?listener_ids=sse&kinds=CONNECTION_OPENED&kinds=EVENT_KIND_CONNECTION_CLOSED"
	s := d.openSSE(t, cl, url, "", nil)
	hello := s.next(t)
	var h struct {
		BootID   string `json:"bootId"`
		Sequence uint64 `json:"sequence"`
	}
	if err := json.Unmarshal([]byte(hello.data), &h); hello.event != "hello" || err != nil || h.BootID != boot || h.Sequence == 0 {
		t.Fatalf("first event %+v (%v), want hello with boot id %s and the head", hello, err, boot)
	}
	connect(3)
	first := readUntil(s, 3)
	s.close()
	connect(4) // while nobody watches
	s = d.openSSE(t, cl, url, strconv.FormatUint(first[len(first)-1], 10), nil)
	if e := s.next(t); e.event != "hello" {
		t.Fatalf("after reconnecting, first event %+v, want hello", e)
	}
	second := readUntil(s, 4)
	s.close()

	// The two reads are, end to end, the listener's connection events in
	// the history, each once.
	w, err := d.unix.WatchEvents(ctx, &listenerdv1.WatchEventsRequest{ListenerIds: []string{"sse"}, AfterSequence: new(uint64),
		Kinds: []listenerdv1.EventKind{listenerdv1.EventKind_EVENT_KIND_CONNECTION_OPENED, listenerdv1.EventKind_EVENT_KIND_CONNECTION_CLOSED}})
	if err != nil {
		t.Fatal(err)
	}
	var want []uint64
	for len(want) < 14 {
		resp, err := w.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range resp.GetEvents() {
			want = append(want, e.GetSequence())
		}
	}
	all := append(first, second...)
	if len(all) != len(want) {
		t.Fatalf("SSE gave %v then %v; the history holds %v", first, second, want)
	}
	for i := range want {
		if all[i] != want[i] {
			t.Fatalf("SSE gave %v then %v; the history holds %v", first, second, want)
		}
	}
}

// TestHTTPEventsOtherBoot: a Last-Event-ID from another boot of the daemon
// (beyond its head, or with a boot_id not its own) starts the stream from
// the first event held; a bad query or Last-Event-ID is a 400.
func TestHTTPEventsOtherBoot(t *testing.T) {
	d := startWeb(t)
	cl := httpClient(t)
	ctx := testContext(t)
	if _, err := d.unix.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Spec: &listenerdv1.ListenerSpec{}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ query, lastID string }{
		{"", "999"},
		{"?boot_id=an-earlier-boot", "1"},
	} {
		s := d.openSSE(t, cl, d.http+"/v1/events"+tc.query, tc.lastID, nil)
		if e := s.next(t); e.event != "hello" {
			t.Fatalf("%+v: first event %+v", tc, e)
		}
		if e := s.next(t); e.id != "1" || e.event != "LISTENER_STARTED" {
			t.Fatalf("%+v: the stream starts at %+v, want the boot's first event", tc, e)
		}
		s.close()
	}
	d.do(t, cl, httpCall{method: "GET", path: "/v1/events?kinds=NOPE"}).wantError(t, 400, 3, "NOPE")
	d.do(t, cl, httpCall{method: "GET", path: "/v1/events", header: http.Header{"Last-Event-Id": {"x"}}}).wantError(t, 400, 3, "Last-Event-ID")
}

// TestHTTPConfigRefused: --http needs authentication, on loopback too;
// off loopback it needs TLS and a token; a bad address is named; nothing
// is created.
func TestHTTPConfigRefused(t *testing.T) {
	p := newPKI(t)
	withTLS := func(a APIConfig) APIConfig { a.TLSCert, a.TLSKey = p.serverCert, p.srvKey; return a }
	for _, tc := range []struct {
		name, http string
		api        APIConfig
		want       string
	}{
		{"every interface without TLS", "0.0.0.0:0", APIConfig{TokenFile: p.tokenFile}, "not a loopback address"},
		{"empty host", ":0", APIConfig{TokenFile: p.tokenFile}, "not a loopback address"},
		{"TLS without a token", "[::]:0", withTLS(APIConfig{}), "--token-file"},
		{"client CA without TLS", "127.0.0.1:0", APIConfig{ClientCA: p.caFile}, "needs TLS"},
		{"loopback without authentication", "127.0.0.1:0", APIConfig{},
			"refusing to serve HTTP on 127.0.0.1:0 without authentication (give --token-file and/or --client-ca)"},
		{"localhost without authentication", "localhost:0", APIConfig{}, "--token-file and/or --client-ca"},
		{"loopback TLS without authentication", "[::1]:0", withTLS(APIConfig{}), "--token-file and/or --client-ca"},
		{"no port", "127.0.0.1", APIConfig{}, "--http"},
		{"bad port", "127.0.0.1:http", APIConfig{}, "--http"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := testkit.ShortDir(t)
			cfg := Config{Socket: filepath.Join(dir, "run", "listenerd.sock"), StateDir: filepath.Join(dir, "state"),
				HTTP: tc.http, API: tc.api}
			err := checkHTTPAddr(cfg.HTTP)
			if err == nil {
				err = Run(testContext(t), cfg)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("%v, want an error saying %q", err, tc.want)
			}
			if _, err := os.Stat(filepath.Dir(cfg.Socket)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the socket directory was created (%v)", err)
			}
		})
	}
}
