package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/testkit"
)

// screenshotEnv names a file the dashboard test saves a screenshot to
// (scripts/dashboard-screenshot sets it for the README's picture).
const screenshotEnv = "LISTENERD_DASHBOARD_SCREENSHOT"

// card selects the dashboard's card of one listener.
func card(id string) string {
	return fmt.Sprintf(`article.listener[data-listener-id=%s]`, jsString(id))
}

// textIs is a JavaScript test that the element sel selects has the text want.
func textIs(sel, want string) string {
	return fmt.Sprintf(`document.querySelector(%s)?.textContent.trim() === %s`, jsString(sel), jsString(want))
}

// tailHas is a JavaScript test that the event tail shows an event of kind
// on listener id whose text contains word.
func tailHas(kind, id, word string) string {
	return fmt.Sprintf(`[...document.querySelectorAll('#events li[data-kind=%s]')].some(li => li.dataset.listenerId === %s && li.textContent.includes(%s))`,
		jsString(kind), jsString(id), jsString(word))
}

// readEnd reads c until it ends, and fails if it does not.
func readEnd(t *testing.T, c net.Conn, what string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(guard))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: the connection stayed open", what)
	}
}

// openWithToken opens the dashboard at base with the token in the
// address's fragment (base/#token=TOKEN, as the README says), waits for the
// event stream, and checks the page kept the token for the tab's session
// and took it out of the address.
func openWithToken(tb *tab, base, token string) {
	tb.t.Helper()
	tb.run("open the dashboard", chromedp.Navigate(base+"/#token="+token))
	tb.until("the event stream", `document.querySelector('#conn-status').dataset.state === 'live'`)
	if href := value(tb, "read the address", chromedp.Evaluate[string](`location.href`)); href != base+"/" {
		tb.t.Errorf("the address after load is %q, want %q (the token taken out)", href, base+"/")
	}
	if kept := value(tb, "read the session", chromedp.Evaluate[string](`sessionStorage.getItem('listenerd.token')`)); kept != token {
		tb.t.Errorf("sessionStorage holds %q, want the fragment's token %q", kept, token)
	}
}

// TestDashboard drives the embedded dashboard in a headless Chromium
// against the real daemon: a listener created in the page, a connection
// from a plain TCP client shown live, a limit changed, the API's
// validation messages shown as the API words them, a connection kicked and
// the listener closed, each checked against the daemon over gRPC.
func TestDashboard(t *testing.T) {
	tb := newTab(t)
	d, token := startWebDaemon(t, testkit.ShortDir(t))
	ctx := testContext(t)

	openWithToken(tb, httpURL(t, d), token)
	st, err := d.client.GetDaemonStatus(ctx, &listenerdv1.GetDaemonStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got := tb.textOf("#boot-id"); got != st.GetStatus().GetBootId() {
		t.Errorf("boot id shown %q, daemon's %q", got, st.GetStatus().GetBootId())
	}

	// A listener made by another client shows up without a reload.
	echo, err := d.client.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: "echo", Spec: &listenerdv1.ListenerSpec{
		Handler: &listenerdv1.Handler{Kind: &listenerdv1.Handler_Echo{Echo: &listenerdv1.EchoHandler{}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	echoCard := card(echo.GetListener().GetId())
	tb.until("the listener made over gRPC", textIs(echoCard+` [data-field="handler"]`, "echo"))
	ec := dial(t, echo.GetListener().GetStatus().GetBoundAddress())
	tb.visible("its connection", echoCard+` tr[data-connection-id]`)

	// Create a listener in the page.
	tb.run("create a listener",
		fill(`#create-form [name="name"]`, "web"),
		fill(`#create-form [name="port"]`, "0"),
		click(`#create-submit`),
		chromedp.WaitVisible(chromedp.CSS(`article.listener[data-name="web"]`)))
	id := tb.attr(`article.listener[data-name="web"]`, "data-listener-id")
	got, err := d.client.GetListener(ctx, &listenerdv1.GetListenerRequest{Id: "web"})
	if err != nil {
		t.Fatalf("the listener created in the page: %v", err)
	}
	if got.GetListener().GetId() != id || got.GetListener().GetStatus().GetState() != listenerdv1.State_STATE_LISTENING {
		t.Fatalf("the daemon has %v; the page shows id %s", got.GetListener(), id)
	}
	web := card(id)
	addr := got.GetListener().GetStatus().GetBoundAddress()
	if shown := tb.textOf(web + ` [data-field="address"]`); shown != addr {
		t.Errorf("address shown %q, bound %q", shown, addr)
	}
	tb.until("the create result", fmt.Sprintf(`document.querySelector('#create-result').textContent.includes(%s)`, jsString(id)))
	tb.until("its state", textIs(web+` [data-field="state"]`, "listening"))
	tb.until("unlimited", textIs(web+` [data-field="max"]`, "unlimited"))

	// A plain TCP client's connection appears without a reload.
	c1 := dial(t, addr)
	tb.visible("the connection", web+` tr[data-connection-id]`)
	conns, err := d.client.ListConnections(ctx, &listenerdv1.ListConnectionsRequest{ListenerId: id})
	if err != nil || len(conns.GetConnections()) != 1 {
		t.Fatalf("ListConnections: %v %v", conns, err)
	}
	connID := conns.GetConnections()[0].GetId()
	row := fmt.Sprintf(`%s tr[data-connection-id=%s]`, web, jsString(connID))
	tb.until("the connection's remote address", textIs(row+` td:nth-child(2)`, c1.LocalAddr().String()))
	tb.until("one open", textIs(web+` [data-field="open"]`, "1"))
	tb.until("one accepted", textIs(web+` [data-field="accepted"]`, "1"))
	tb.until("the opened event", tailHas("CONNECTION_OPENED", id, connID))

	// Change its limit in the page.
	tb.run("set max connections to 1",
		fill(web+` [name="maxConnections"]`, "1"),
		click(web+` .limits-form button[type="submit"]`))
	tb.until("the new limit", textIs(web+` [data-field="max"]`, "1"))
	got, err = d.client.GetListener(ctx, &listenerdv1.GetListenerRequest{Id: id})
	if err != nil || got.GetListener().GetSpec().GetLimits().MaxConnections == nil || got.GetListener().GetSpec().GetLimits().GetMaxConnections() != 1 {
		t.Fatalf("the daemon's limits after the page set them: %v %v", got.GetListener().GetSpec().GetLimits(), err)
	}
	tb.until("the limits event", tailHas("LIMITS_CHANGED", id, "max connections 1"))

	// A connection over the limit is rejected, and the page counts it.
	c2 := dial(t, addr)
	readEnd(t, c2, "the connection over the limit")
	tb.until("one rejected", textIs(web+` [data-field="rejected"]`, "1"))
	tb.until("the rejected event", tailHas("CONNECTION_REJECTED", id, "max connections"))

	// Bad values: the page shows the API's message, as the API words it
	// for any client (ctl prints the same after "invalid input: ").
	tb.run("a negative idle timeout",
		fill(web+` [name="idleTimeout"]`, "-5s"),
		click(web+` .limits-form button[type="submit"]`))
	tb.until("the limit's error", fmt.Sprintf(`document.querySelector(%s).textContent !== ''`, jsString(web+` [data-field="error"]`)))
	_, err = d.client.UpdateListener(ctx, &listenerdv1.UpdateListenerRequest{
		Listener:   &listenerdv1.Listener{Id: id, Spec: &listenerdv1.ListenerSpec{Limits: &listenerdv1.Limits{IdleTimeout: durationpb.New(-5 * time.Second)}}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"spec.limits.idle_timeout"}},
	})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("UpdateListener with a negative idle timeout: %v", err)
	}
	if shown := tb.textOf(web + ` [data-field="error"]`); shown != status.Convert(err).Message() {
		t.Errorf("the page shows %q for a negative idle timeout; the API says %q", shown, status.Convert(err).Message())
	}
	tb.run("a bad name",
		fill(`#create-form [name="name"]`, "Bad Name"),
		click(`#create-submit`))
	tb.until("the create error", `document.querySelector('#create-error').textContent !== ''`)
	shown := tb.textOf("#create-error")
	_, err = d.client.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: "Bad Name", Spec: &listenerdv1.ListenerSpec{}})
	if status.Code(err) != codes.InvalidArgument || shown != status.Convert(err).Message() {
		t.Errorf("the page shows %q for a bad name; the API says %v", shown, err)
	}
	if r := d.ctl("listen", "--name", "Bad Name"); r.code == 0 || !strings.Contains(r.stderr, shown) {
		t.Errorf("ctl listen --name 'Bad Name': exit %d, %q; the page showed %q", r.code, r.stderr, shown)
	}

	if path := os.Getenv(screenshotEnv); path != "" {
		png := value(tb, "screenshot", chromedp.FullScreenshot(100))
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// Kick the connection from the page.
	tb.run("kick", click(row+` button.kick`))
	tb.until("the kicked connection gone", fmt.Sprintf(`!document.querySelector(%s)`, jsString(row)))
	readEnd(t, c1, "the kicked connection")
	tb.until("the closed event", tailHas("CONNECTION_CLOSED", id, "kicked"))
	tb.until("none open", textIs(web+` [data-field="open"]`, "0"))
	if conns, err := d.client.ListConnections(ctx, &listenerdv1.ListConnectionsRequest{ListenerId: id}); err != nil || len(conns.GetConnections()) != 0 {
		t.Errorf("connections after the kick: %v %v", conns, err)
	}

	// Close the listener from the page.
	tb.run("close", click(web+` button.close-listener`))
	tb.until("the closed listener gone", fmt.Sprintf(`!document.querySelector(%s)`, jsString(web)))
	tb.until("the listener closed event", tailHas("LISTENER_CLOSED", id, ""))
	if _, err := d.client.GetListener(ctx, &listenerdv1.GetListenerRequest{Id: id}); status.Code(err) != codes.NotFound {
		t.Errorf("GetListener after the page closed it: %v", err)
	}
	// The other listener and its connection are still there.
	tb.visible("the echo listener", echoCard+` tr[data-connection-id]`)
	ec.Close()
}

// TestDashboardDaemonRestart restarts the daemon under an open page: the
// event stream reconnects by itself, the new boot id in its hello makes
// the page say events were missed and reload its state, and it follows
// the new daemon live. The page reaches the daemon through a TCP relay the
// test owns, which plays "the same address": the new daemon serves HTTP on
// a port of its own choosing (an old port could be taken meanwhile), and
// the relay forwards new connections there.
func TestDashboardDaemonRestart(t *testing.T) {
	tb := newTab(t)
	dir := testkit.ShortDir(t)
	d1, token := startWebDaemon(t, dir)
	ctx := testContext(t)
	relay := newRelay(t, strings.TrimPrefix(httpURL(t, d1), "http://"))

	openWithToken(tb, "http://"+relay.addr(), token)
	boot1 := tb.textOf("#boot-id")
	created, err := d1.client.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: "kept", Spec: &listenerdv1.ListenerSpec{}})
	if err != nil {
		t.Fatal(err)
	}
	l := created.GetListener()
	kept := card(l.GetId())
	c := dial(t, l.GetStatus().GetBoundAddress())
	tb.visible("the connection", kept+` tr[data-connection-id]`)
	c.Close() // so the daemon need not drain it
	tb.until("the closed connection gone", fmt.Sprintf(`!document.querySelector(%s)`, jsString(kept+` tr[data-connection-id]`)))

	relay.retarget("") // refuse while no daemon serves
	d1.stop()
	d2 := startDaemonIn(t, dir, "--http", "127.0.0.1:0", "--token-file", filepath.Join(dir, "token")) // the same token
	relay.retarget(strings.TrimPrefix(httpURL(t, d2), "http://"))
	st, err := d2.client.GetDaemonStatus(ctx, &listenerdv1.GetDaemonStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	boot2 := st.GetStatus().GetBootId()
	if boot2 == boot1 {
		t.Fatalf("the restarted daemon kept boot id %s", boot1)
	}

	tb.visible("the missed-events notice", `#missed`)
	notice := tb.textOf("#missed-text")
	if !strings.Contains(notice, boot1) || !strings.Contains(notice, boot2) || !strings.Contains(notice, "missed") {
		t.Errorf("the notice says %q; want both boot ids (%s, %s) and that events were missed", notice, boot1, boot2)
	}
	tb.until("the new boot id", textIs("#boot-id", boot2))
	tb.until("the gap in the tail", `document.querySelector('#events li.gap')?.textContent.includes('missed')`)
	tb.until("the stream live again", `document.querySelector('#conn-status').dataset.state === 'live'`)
	// The restored listener (same id, same port), reloaded from the API.
	tb.until("the restored listener", textIs(kept+` [data-field="address"]`, l.GetStatus().GetBoundAddress()))
	// And the page follows the new daemon's events.
	c = dial(t, l.GetStatus().GetBoundAddress())
	tb.visible("a connection to the new daemon", kept+` tr[data-connection-id]`)
	tb.until("its opened event", tailHas("CONNECTION_OPENED", l.GetId(), ""))
	c.Close()
}

// relay forwards TCP connections to a target that can change: a real
// network hop standing for "the daemon's address" across a restart.
type relay struct {
	t  *testing.T
	ln net.Listener
	wg sync.WaitGroup

	mu     sync.Mutex
	target string // "" refuses
	conns  map[net.Conn]struct{}
	closed bool
}

func newRelay(t *testing.T, target string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{t: t, ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		r.closed = true
		for c := range r.conns {
			c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
	return r
}

func (r *relay) addr() string { return r.ln.Addr().String() }

// retarget sends new connections to target ("" refuses them).
func (r *relay) retarget(target string) {
	r.mu.Lock()
	r.target = target
	r.mu.Unlock()
}

func (r *relay) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return // closed at cleanup
		}
		r.wg.Add(1)
		go r.serve(c)
	}
}

// track registers conns to close at cleanup; false when cleanup began.
func (r *relay) track(conns ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	for _, c := range conns {
		r.conns[c] = struct{}{}
	}
	return true
}

func (r *relay) untrack(conns ...net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range conns {
		delete(r.conns, c)
		c.Close()
	}
}

func (r *relay) serve(c net.Conn) {
	defer r.wg.Done()
	r.mu.Lock()
	target := r.target
	r.mu.Unlock()
	if target == "" {
		c.Close()
		return
	}
	up, err := net.DialTimeout("tcp", target, guard)
	if err != nil {
		c.Close()
		return
	}
	if !r.track(c, up) {
		c.Close()
		up.Close()
		return
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(up, c)
	go pipe(c, up)
	<-done // either side ended: end both
	r.untrack(c, up)
	<-done
}

// TestDashboardToken serves the HTTP API with a token: the page is refused
// until the token is given in its field, then sends it (Authorization:
// Bearer, and ?access_token= on the event stream) and keeps it for the
// tab's session.
func TestDashboardToken(t *testing.T) {
	tb := newTab(t)
	dir := testkit.ShortDir(t)
	token, tokenFile := writeToken(t, dir)
	d := startDaemonIn(t, dir, "--http", "127.0.0.1:0", "--token-file", tokenFile)
	ctx := testContext(t)
	l, err := d.client.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: "guarded", Spec: &listenerdv1.ListenerSpec{}})
	if err != nil {
		t.Fatal(err)
	}

	tb.run("open the dashboard", chromedp.Navigate(httpURL(t, d)+"/"))
	tb.until("the refusal", `document.querySelector('#conn-status').dataset.state === 'down'`)
	if s := tb.textOf("#conn-status"); !strings.Contains(strings.ToLower(s), "token") && !strings.Contains(strings.ToLower(s), "auth") {
		t.Errorf("status without a token: %q; want the API's authentication message", s)
	}
	if n := value(tb, "count the cards", chromedp.Evaluate[int](`document.querySelectorAll('article.listener').length`)); n != 0 {
		t.Errorf("%d listeners shown without a token", n)
	}

	tb.run("give the token", fill("#token", token), click(`#token-form button`))
	tb.until("the event stream", `document.querySelector('#conn-status').dataset.state === 'live'`)
	guarded := card(l.GetListener().GetId())
	tb.until("the listener", textIs(guarded+` [data-field="name"]`, "guarded"))
	c := dial(t, l.GetListener().GetStatus().GetBoundAddress())
	tb.visible("its connection, through the event stream", guarded+` tr[data-connection-id]`)
	c.Close()
	if kept := value(tb, "read the session", chromedp.Evaluate[string](`sessionStorage.getItem('listenerd.token')`)); kept != token {
		t.Errorf("sessionStorage holds %q", kept)
	}
	if shown := value(tb, "read the field", chromedp.Evaluate[string](`document.querySelector('#token').value`)); shown != "" {
		t.Errorf("the token stays in the field: %q", shown)
	}
}
