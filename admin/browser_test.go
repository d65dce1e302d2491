package admin

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// The console in a real browser: headless Chromium driven through the
// DevTools protocol, against the console of a real proxy with live
// sessions over loopback.
//
// It runs with POPGATE_INTEROP=1 (scripts/test sets it and installs
// Debian's chromium); then a missing browser is a failure. Screenshots of
// every page go to $POPGATE_SCREENSHOTS if set, else to a temporary
// directory.

// browserEvents collects what must not happen on a console page: console
// errors, uncaught exceptions, log entries of level error (CSP violations,
// failed loads) and JavaScript dialogs.
type browserEvents struct {
	mu      sync.Mutex
	errors  []string
	dialogs []string
}

func (b *browserEvents) add(list *[]string, s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	*list = append(*list, s)
}

func (b *browserEvents) take() (errors, dialogs []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	errors, dialogs = b.errors, b.dialogs
	b.errors, b.dialogs = nil, nil
	return errors, dialogs
}

func chromiumPath(t *testing.T) string {
	t.Helper()
	if os.Getenv("POPGATE_INTEROP") != "1" {
		t.Skip("set POPGATE_INTEROP=1 (scripts/test does)")
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium not found: install Debian's chromium (scripts/test does)")
	return ""
}

func TestConsoleInBrowser(t *testing.T) {
	bin := chromiumPath(t)
	shots := os.Getenv("POPGATE_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	} else if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}

	e := newConsoleEnv(t)
	pop := e.liveSession()
	xss := e.dial()
	xss.cmd("USER "+xssUser, "+OK")
	xss.cmd("PASS nothing-right", "-ERR")

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.WindowSize(1100, 800),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-extensions", true),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()

	ev := &browserEvents{}
	chromedp.ListenTarget(bctx, func(v any) {
		switch v := v.(type) {
		case *runtime.EventConsoleAPICalled:
			if v.Type == runtime.APITypeError || v.Type == runtime.APITypeAssert {
				ev.add(&ev.errors, fmt.Sprintf("console.%s", v.Type))
			}
		case *runtime.EventExceptionThrown:
			ev.add(&ev.errors, "exception: "+v.ExceptionDetails.Text)
		case *cdplog.EventEntryAdded:
			if v.Entry.Level == cdplog.LevelError {
				ev.add(&ev.errors, fmt.Sprintf("%s: %s (%s)", v.Entry.Source, v.Entry.Text, v.Entry.URL))
			}
		case *page.EventJavascriptDialogOpening:
			ev.add(&ev.dialogs, string(v.Type)+": "+v.Message)
			go chromedp.Run(bctx, page.HandleJavaScriptDialog(false))
		}
	})

	base := e.web.URL
	// check runs actions on the page and fails the test on a console
	// error or a dialog since the last check.
	// expected is a console error the step causes on purpose.
	check := func(what, expected string, actions ...chromedp.Action) {
		t.Helper()
		if err := chromedp.Run(bctx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		errs, dialogs := ev.take()
		if expected != "" {
			if len(errs) != 1 || !strings.Contains(errs[0], expected) {
				t.Errorf("%s: browser console errors %q, want one with %q", what, errs, expected)
			}
			errs = nil
		}
		for _, s := range errs {
			t.Errorf("%s: browser console error: %s", what, s)
		}
		for _, s := range dialogs {
			t.Errorf("%s: a dialog opened: %s", what, s)
		}
	}
	screenshot := func(name string) chromedp.Action {
		return chromedp.ActionFunc(func(ctx context.Context) error {
			var png []byte
			if err := chromedp.FullScreenshot(&png, 100).Do(ctx); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(shots, name+".png"), png, 0o644)
		})
	}

	// Not logged in: the page says so (401) and offers the login.
	var text string
	check("overview without login", "status of 401", chromedp.Navigate(base+"/console/"), chromedp.Text("main", &text, chromedp.ByQuery))
	if !strings.Contains(text, "log in") {
		t.Errorf("overview without a login shows %q", text)
	}
	check("login", "", chromedp.Navigate(base+"/console/login"),
		screenshot("login"),
		chromedp.SendKeys("#token", consoleToken, chromedp.ByID),
		chromedp.Submit("#token", chromedp.ByID),
		chromedp.WaitVisible(`form.logout`, chromedp.ByQuery),
	)

	pages := []struct{ name, path, want string }{
		{"overview", "/console/", "sessions relaying"},
		{"sessions", "/console/sessions", "alice"},
		{"certificates", "/console/certificates", "No TLS listener"},
		{"backends", "/console/backends", "not checked"},
		{"routing", "/console/routing", "Where does user"},
		{"legacy", "/console/legacy", "none seen"},
	}
	for _, p := range pages {
		var imgs int
		check(p.name, "", chromedp.Navigate(base+p.path),
			chromedp.WaitVisible("main", chromedp.ByQuery),
			chromedp.Text("main", &text, chromedp.ByQuery),
			chromedp.Evaluate(`document.querySelectorAll("main img").length`, &imgs),
			screenshot(p.name),
		)
		if !strings.Contains(text, p.want) {
			t.Errorf("%s page: %q not in %q", p.name, p.want, text)
		}
		if imgs != 0 {
			t.Errorf("%s page: %d img elements, want none (an unescaped user name?)", p.name, imgs)
		}
	}

	// The sessions page shows the hostile user name as text.
	check("sessions", "", chromedp.Navigate(base+"/console/sessions"), chromedp.Text("main table", &text, chromedp.ByQuery))
	if !strings.Contains(text, xssUser) {
		t.Errorf("the sessions table does not show %q as text: %q", xssUser, text)
	}

	// End alice's sessions: the link leads to the confirmation, whose
	// button ends them.
	var nodes []*cdp.Node
	check("end link", "", chromedp.Navigate(base+"/console/sessions?user=alice"),
		chromedp.Nodes(`a[href="/console/end?user=alice"]`, &nodes, chromedp.ByQueryAll))
	if len(nodes) == 0 {
		t.Fatal("no end link for alice on the sessions page")
	}
	check("confirmation", "", chromedp.Click(`a[href="/console/end?user=alice"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#confirm-end", chromedp.ByID),
		chromedp.Text("main", &text, chromedp.ByQuery),
		screenshot("end-confirm"))
	if !strings.Contains(text, "alice") {
		t.Errorf("the confirmation page does not name alice: %q", text)
	}
	pop.cmd("STAT", "+OK") // still connected after the confirmation page
	check("end", "", chromedp.Click("#confirm-end", chromedp.ByID),
		chromedp.WaitVisible("p.ok", chromedp.ByQuery),
		chromedp.Text("main", &text, chromedp.ByQuery),
		screenshot("end-done"))
	if !strings.Contains(text, "Ended 1 session") {
		t.Errorf("after the confirmation: %q", text)
	}
	if !pop.closed(5 * time.Second) {
		t.Error("alice's client is still connected after the sessions were ended")
	}
	if q := e.backend.Quits(); q != 0 {
		t.Errorf("the backend saw %d QUIT, want none", q)
	}

	// The routing form, for a routed and an unrouted user.
	for _, tc := range []struct{ user, want string }{
		{"alice", "alice → b1"},
		{"bob", "bob: no route"},
	} {
		check("routing "+tc.user, "", chromedp.Navigate(base+"/console/routing"),
			chromedp.SendKeys("#user", tc.user, chromedp.ByID),
			chromedp.Submit("#user", chromedp.ByID),
			chromedp.WaitVisible("#answer", chromedp.ByID),
			chromedp.Text("#answer", &text, chromedp.ByID),
			screenshot("routing-"+tc.user))
		if !strings.Contains(text, tc.want) {
			t.Errorf("routing %s: %q, want %q", tc.user, text, tc.want)
		}
	}
	t.Logf("screenshots in %s", shots)
}
