// Package dashboard serves listenerd's web dashboard: one HTML page, its
// script and its style sheet, embedded in the binary (no build step). The
// page talks to the daemon's HTTP/JSON API (/v1/...) from the same origin.
package dashboard

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"net/http"
	"time"
)

//go:embed static
var static embed.FS

// file is one embedded file, ready to serve.
type file struct {
	body  []byte
	ctype string
	etag  string
}

// files maps the URL paths the dashboard answers to their files.
var files = map[string]file{
	"/":             load("static/index.html", "text/html; charset=utf-8"),
	"/ui/app.js":    load("static/app.js", "text/javascript; charset=utf-8"),
	"/ui/style.css": load("static/style.css", "text/css; charset=utf-8"),
}

func load(name, ctype string) file {
	body, err := static.ReadFile(name)
	if err != nil {
		panic("dashboard: " + err.Error()) // the embed directive guarantees it
	}
	sum := sha256.Sum256(body)
	return file{body: body, ctype: ctype, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
}

// csp keeps the page to its own origin: its script, its style sheet and
// the API; no inline script, no framing.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler serves the dashboard: the page at "/", its script and style
// sheet under "/ui/". Any other path is 404, any method but GET and HEAD
// 405. Each answer carries an ETag, so a browser revalidates cheaply and
// picks up a new daemon's page at once.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Type", f.ctype)
		h.Set("ETag", f.etag)
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.body))
	})
}
