package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// requireBrowser, when set, turns a missing Chromium into a failure (CI
// sets it; elsewhere the browser tests skip without one).
const requireBrowser = "LISTENERD_REQUIRE_BROWSER"

// tab is one page of a headless Chromium started for one test.
type tab struct {
	t   *testing.T
	ctx context.Context

	mu     sync.Mutex
	thrown []string // uncaught exceptions in the page
}

// chromium returns the browser's path, skipping (or failing, under
// LISTENERD_REQUIRE_BROWSER) when there is none.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv(requireBrowser) != "" {
		t.Fatalf("no chromium on PATH and %s is set (apt-get install chromium)", requireBrowser)
	}
	t.Skipf("no chromium on PATH (apt-get install chromium); set %s=1 to make this a failure", requireBrowser)
	return ""
}

// newTab starts a headless Chromium with a fresh profile and returns its
// first tab. The browser is closed, and its process waited for, at
// cleanup; the page must not have thrown.
func newTab(t *testing.T) *tab {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox, // tests run as root in CI
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	// The guard on the whole browser: the first Run below allocates it
	// under this context, so no shorter deadline may be put on that Run.
	root, cancelRoot := context.WithTimeout(context.Background(), 4*guard)
	alloc, cancelAlloc := chromedp.NewExecAllocator(root, opts...)
	ctx, cancelTab := chromedp.NewContext(alloc)
	tb := &tab{t: t, ctx: ctx}
	if err := chromedp.Do(ctx); err != nil {
		cancelTab()
		cancelAlloc()
		cancelRoot()
		t.Fatalf("start chromium: %v", err)
	}
	// The page's console in the test's log; an uncaught exception fails it.
	console := chromedp.Console(ctx)
	read := make(chan struct{})
	go func() {
		defer close(read)
		for m, err := range console {
			if err != nil {
				return // the tab closed
			}
			t.Logf("page console: %s", m)
			if m.IsException() {
				tb.mu.Lock()
				tb.thrown = append(tb.thrown, m.Text)
				tb.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc() // waits for the browser process to exit
		cancelRoot()
		<-read
		tb.mu.Lock()
		defer tb.mu.Unlock()
		for _, e := range tb.thrown {
			t.Errorf("the page threw: %s", e)
		}
	})
	return tb
}

// run runs actions on the page within guard.
func (tb *tab) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, guard)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		tb.t.Fatalf("%s: %v\npage text:\n%s", what, err, tb.text())
	}
}

// value runs one action that returns a value, within guard.
func value[T any](tb *tab, what string, a chromedp.Action[T]) T {
	tb.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, guard)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		tb.t.Fatalf("%s: %v\npage text:\n%s", what, err, tb.text())
	}
	return v
}

// text is the page's visible text, for failure messages.
func (tb *tab) text() string {
	ctx, cancel := context.WithTimeout(tb.ctx, guard)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
	if err != nil {
		return fmt.Sprintf("(unreadable: %v)", err)
	}
	return s
}

// until waits until the JavaScript expression is true in the page.
func (tb *tab) until(what, expr string) {
	tb.t.Helper()
	value(tb, "waiting for "+what, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(20*time.Millisecond), chromedp.WithPollingTimeout(guard)))
}

// visible waits until the element sel selects is visible.
func (tb *tab) visible(what, sel string) {
	tb.t.Helper()
	tb.run(what, chromedp.WaitVisible(chromedp.CSS(sel)))
}

// textOf returns the text of the element sel selects.
func (tb *tab) textOf(sel string) string {
	tb.t.Helper()
	return strings.TrimSpace(value(tb, "reading "+sel, chromedp.TextContent(chromedp.CSS(sel))))
}

// attr returns an attribute of the element sel selects.
func (tb *tab) attr(sel, name string) string {
	tb.t.Helper()
	r := value(tb, "reading "+sel+"@"+name, chromedp.AttributeValue(chromedp.CSS(sel), name))
	if !r.Exists {
		tb.t.Fatalf("%s has no %s attribute", sel, name)
	}
	return r.Value
}

// fill sets the value of the input sel selects, as typing it would.
func fill(sel, text string) chromedp.Action[chromedp.Void] {
	return chromedp.SetValue(chromedp.CSS(sel), text, chromedp.NodeVisible)
}

// click clicks the element sel selects, once it is visible.
func click(sel string) chromedp.Action[chromedp.Void] {
	return chromedp.Click(chromedp.CSS(sel), chromedp.NodeVisible)
}

// jsString quotes s for a JavaScript expression.
func jsString(s string) string {
	b, _ := json.Marshal(s) // a string always marshals
	return string(b)
}
