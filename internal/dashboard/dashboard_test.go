package dashboard

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/goleak"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func get(t *testing.T, srv *httptest.Server, method, path string, header http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func TestHandlerServesTheFiles(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	for _, tc := range []struct{ path, ctype, contains string }{
		{"/", "text/html; charset=utf-8", `<script src="ui/app.js" defer></script>`},
		{"/ui/app.js", "text/javascript; charset=utf-8", "new EventSource("},
		{"/ui/style.css", "text/css; charset=utf-8", "#conn-status"},
	} {
		resp, body := get(t, srv, http.MethodGet, tc.path, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", tc.path, resp.Status)
		}
		if got := resp.Header.Get("Content-Type"); got != tc.ctype {
			t.Errorf("GET %s: Content-Type %q, want %q", tc.path, got, tc.ctype)
		}
		if !strings.Contains(body, tc.contains) {
			t.Errorf("GET %s: body lacks %q", tc.path, tc.contains)
		}
		for _, h := range []string{"Content-Security-Policy", "X-Content-Type-Options", "ETag"} {
			if resp.Header.Get(h) == "" {
				t.Errorf("GET %s: no %s header", tc.path, h)
			}
		}
		// A browser that holds the file revalidates it for nothing.
		again, _ := get(t, srv, http.MethodGet, tc.path, http.Header{"If-None-Match": {resp.Header.Get("ETag")}})
		if again.StatusCode != http.StatusNotModified {
			t.Errorf("GET %s with its ETag: %s, want 304", tc.path, again.Status)
		}
		head, body := get(t, srv, http.MethodHead, tc.path, nil)
		if head.StatusCode != http.StatusOK || body != "" {
			t.Errorf("HEAD %s: %s with %d bytes", tc.path, head.Status, len(body))
		}
	}
}

func TestHandlerRefusesTheRest(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{http.MethodGet, "/ui/", http.StatusNotFound},
		{http.MethodGet, "/ui/missing.js", http.StatusNotFound},
		{http.MethodGet, "/static/app.js", http.StatusNotFound},
		{http.MethodGet, "/index.html", http.StatusNotFound},
		{http.MethodPost, "/", http.StatusMethodNotAllowed},
		{http.MethodDelete, "/ui/app.js", http.StatusMethodNotAllowed},
	} {
		resp, _ := get(t, srv, tc.method, tc.path, nil)
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s: %s, want %d", tc.method, tc.path, resp.Status, tc.want)
		}
	}
}

// TestScriptFindsItsElements holds the script and the page together: every
// element the script looks up by id is in the page, once.
func TestScriptFindsItsElements(t *testing.T) {
	page, js := string(files["/"].body), string(files["/ui/app.js"].body)
	ids := regexp.MustCompile(`\$\('#([a-z-]+)'\)`).FindAllStringSubmatch(js, -1)
	if len(ids) < 10 {
		t.Fatalf("found %d id look-ups in app.js; the pattern is stale", len(ids))
	}
	for _, m := range ids {
		if n := strings.Count(page, `id="`+m[1]+`"`); n != 1 {
			t.Errorf("app.js looks up #%s; index.html has it %d times", m[1], n)
		}
	}
	fields := regexp.MustCompile(`field\((?:card|root), '([a-zA-Z]+)'\)`).FindAllStringSubmatch(js, -1)
	for _, m := range fields {
		if !strings.Contains(page, `data-field="`+m[1]+`"`) {
			t.Errorf("app.js uses data-field %q; the listener template lacks it", m[1])
		}
	}
}

// The page listens to every kind of event the API has, and sums up each
// one's detail in the tail: a kind added to the proto without the page
// would go unseen.
func TestScriptKnowsEveryEventKind(t *testing.T) {
	js := string(files["/ui/app.js"].body)
	list := regexp.MustCompile(`(?s)const KINDS = \[(.*?)\];`).FindStringSubmatch(js)
	if list == nil {
		t.Fatal("no KINDS list in app.js; the pattern is stale")
	}
	for n, name := range listenerdv1.EventKind_name {
		if n == 0 {
			continue
		}
		kind := strings.TrimPrefix(name, "EVENT_KIND_")
		if !strings.Contains(list[1], "'"+kind+"'") {
			t.Errorf("app.js's KINDS lacks %s", kind)
		}
		// ConnectionClosed's detail is the Event's field connectionClosed.
		words := strings.Split(strings.ToLower(kind), "_")
		for i := 1; i < len(words); i++ {
			words[i] = strings.ToUpper(words[i][:1]) + words[i][1:]
		}
		if detail := strings.Join(words, ""); !strings.Contains(js, "  "+detail+": (d) =>") {
			t.Errorf("app.js's SUMMARIES lacks %s", detail)
		}
	}
}
