package interop

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/popgate/popgate/internal/dovecotrun"
)

// The console in a real browser: headless Chromium (Debian's chromium,
// which requireInterop demands) driven through the DevTools protocol,
// against the console of the popgate binary with live sessions through it
// to a real Dovecot. Screenshots of every page go to $POPGATE_SCREENSHOTS
// if set, else to a temporary directory; docs/console-overview.png comes
// from here.

// xssUser is a user name that would run script if a page put it into the
// HTML unescaped. Dovecot accepts it (auth_username_chars is emptied), so
// it logs in and shows as a live session.
const xssUser = "<img src=x onerror=alert(1)>"

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

// browser is a headless Chromium tab.
type browser struct {
	t     *testing.T
	ctx   context.Context
	ev    *browserEvents
	shots string // directory of the screenshots
}

// startBrowser starts Chromium for t (requireInterop has checked that it is
// installed) and listens for errors and dialogs.
func startBrowser(t *testing.T, timeout time.Duration) *browser {
	t.Helper()
	bin, err := lookBinary("chromium")
	if err != nil {
		t.Fatal(err)
	}
	shots := os.Getenv("POPGATE_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	} else if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin),
		chromedp.WindowSize(1100, 800),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-extensions", true),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	t.Cleanup(cancel)
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(acancel)
	bctx, bcancel := chromedp.NewContext(actx)
	t.Cleanup(bcancel)

	b := &browser{t: t, ctx: bctx, ev: &browserEvents{}, shots: shots}
	chromedp.ListenTarget(bctx, func(v any) {
		switch v := v.(type) {
		case *runtime.EventConsoleAPICalled:
			if v.Type == runtime.APITypeError || v.Type == runtime.APITypeAssert {
				b.ev.add(&b.ev.errors, fmt.Sprintf("console.%s", v.Type))
			}
		case *runtime.EventExceptionThrown:
			b.ev.add(&b.ev.errors, "exception: "+v.ExceptionDetails.Text)
		case *cdplog.EventEntryAdded:
			if v.Entry.Level == cdplog.LevelError {
				b.ev.add(&b.ev.errors, fmt.Sprintf("%s: %s (%s)", v.Entry.Source, v.Entry.Text, v.Entry.URL))
			}
		case *page.EventJavascriptDialogOpening:
			b.ev.add(&b.ev.dialogs, string(v.Type)+": "+v.Message)
			go chromedp.Run(bctx, page.HandleJavaScriptDialog(false))
		}
	})
	return b
}

// check runs actions on the page and fails the test on a console error or
// a dialog since the last check. expected is a console error the step
// causes on purpose ("" for none).
func (b *browser) check(what, expected string, actions ...chromedp.Action) {
	b.t.Helper()
	if err := chromedp.Run(b.ctx, actions...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
	errs, dialogs := b.ev.take()
	if expected != "" {
		if len(errs) != 1 || !strings.Contains(errs[0], expected) {
			b.t.Errorf("%s: browser console errors %q, want one with %q", what, errs, expected)
		}
		errs = nil
	}
	for _, s := range errs {
		b.t.Errorf("%s: browser console error: %s", what, s)
	}
	for _, s := range dialogs {
		b.t.Errorf("%s: a dialog opened: %s", what, s)
	}
}

// screenshot writes the whole page to name.png in b.shots.
func (b *browser) screenshot(name string) chromedp.Action {
	return chromedp.ActionFunc(func(ctx context.Context) error {
		var png []byte
		if err := chromedp.FullScreenshot(&png, 100).Do(ctx); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(b.shots, name+".png"), png, 0o644)
	})
}

// TestConsoleInBrowser: with real sessions through popgate to Dovecot, the
// console's pages load in Chromium with no console error and no dialog;
// the sessions page lists the live sessions and shows the hostile user name
// as text; "end" and its confirmation end a session, which its client sees
// closed and Dovecot sees end without QUIT; the routing form answers for a
// routed and an unrouted user; the backends page turns a stopped Dovecot
// red within health_interval × health_failures (and slack) and green again
// once it is back.
func TestConsoleInBrowser(t *testing.T) {
	requireInterop(t, "dovecot", "chromium")
	t.Parallel()
	d := startDovecotWith(t, func(o *dovecotrun.Options) {
		o.Users[xssUser] = "Xss-pw-8Lm2q"
		// Dovecot refuses names outside letters, digits and ".-_@" by
		// default; empty allows all.
		o.ExtraConfig = append(o.ExtraConfig, "auth_username_chars =")
		o.NoTLSInstance, o.HAProxy = false, false
	})
	const (
		token    = "console-token-4Tr8wQ2z"
		interval = 200 * time.Millisecond
		failures = 3
		slack    = 15 * time.Second // a check's timeout, page loads, a loaded 2-core machine
	)
	secrets := []string{d.Users[userAlice], d.Users[userBob], d.Users[xssUser]}
	pg := startPopgate(t, popgateConfig{
		Backends: []popgateBackend{{
			Name: "mx", Address: d.PlainAddr, TLS: "starttls", ServerName: d.ServerName, CAFile: d.CAFile,
			HealthInterval: interval.String(), HealthFailures: failures, HealthTimeout: "2s",
		}},
		// No route.default: anyone else has no route.
		Users:      map[string]string{userAlice: "mx", userBob: "mx", xssUser: "mx"},
		AdminToken: token,
		// Fixed ports rather than 127.0.0.1:0, which the overview would
		// show as configured (docs/console-overview.png comes from here).
		POP3SAddress: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		POP3Address:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
	}, secrets...)
	addr, _ := pg.waitRecords(t, "admin endpoints listening", 1)[0]["address"].(string)
	base := "http://" + addr

	// A session QUIT at once shows what Dovecot logs for a QUIT; alice's
	// and the hostile user's stay logged in.
	bob := dialPopgate(t, pg, "pop3s")
	bob.login(userBob, d.Users[userBob])
	if resp := bob.cmd("QUIT"); !strings.HasPrefix(resp, "+OK") {
		t.Fatalf("QUIT: %q", resp)
	}
	alice := dialPopgate(t, pg, "pop3s")
	alice.login(userAlice, d.Users[userAlice])
	xss := dialPopgate(t, pg, "pop3")
	xss.login(xssUser, d.Users[xssUser])
	// pop3(USER)<pid><session>: Info: Disconnected: REASON top=...
	disconnected := func(user string) []string {
		re := regexp.MustCompile(`pop3\(` + regexp.QuoteMeta(user) + `\)\S*: Info: Disconnected: ([^\n]*?) top=`)
		var reasons []string
		for _, m := range re.FindAllStringSubmatch(d.mainLog(t), -1) {
			reasons = append(reasons, m[1])
		}
		return reasons
	}
	d.waitLog(t, d.mainLog, "bob's QUIT", func(string) bool { return len(disconnected(userBob)) > 0 })
	if r := disconnected(userBob); len(r) != 1 || r[0] != "Logged out" {
		t.Fatalf("Dovecot logged bob's QUIT as %q, want [\"Logged out\"]", r)
	}

	b := startBrowser(t, 3*time.Minute)
	var text string
	// Not logged in: the page says so (401) and offers the login.
	b.check("overview without login", "status of 401", chromedp.Navigate(base+"/console/"), chromedp.Text("main", &text, chromedp.ByQuery))
	if !strings.Contains(text, "log in") {
		t.Errorf("overview without a login shows %q", text)
	}
	b.check("login", "", chromedp.Navigate(base+"/console/login"),
		b.screenshot("login"),
		chromedp.SendKeys("#token", token, chromedp.ByID),
		chromedp.Submit("#token", chromedp.ByID),
		chromedp.WaitVisible(`form.logout`, chromedp.ByQuery),
	)

	// backendHealth reloads the backends page until Dovecot's address
	// shows as want (up or down) and returns how long that took.
	backendHealth := func(want string, start time.Time, within time.Duration) time.Duration {
		t.Helper()
		sel := map[string]string{"up": "span.ok", "down": "span.bad"}[want]
		for {
			var n int
			b.check("backends", "", chromedp.Navigate(base+"/console/backends"),
				chromedp.WaitVisible("main", chromedp.ByQuery),
				chromedp.Text("main", &text, chromedp.ByQuery),
				chromedp.Evaluate(fmt.Sprintf(`document.querySelectorAll("main td %s").length`, sel), &n))
			if n == 1 && strings.Contains(text, d.PlainAddr+": "+want) {
				return time.Since(start)
			}
			if time.Since(start) > within {
				t.Fatalf("the backends page does not show %s as %s after %v: %q", d.PlainAddr, want, within, text)
			}
			time.Sleep(interval)
		}
	}
	backendHealth("up", time.Now(), slack)

	pages := []struct{ name, path string }{
		{"overview", "/console/"},
		{"sessions", "/console/sessions"},
		{"certificates", "/console/certificates"},
		{"backends", "/console/backends"},
		{"routing", "/console/routing"},
		{"legacy", "/console/legacy"},
	}
	wants := map[string][]string{
		"overview":     {"sessions relaying", "pop3s", "pop3"},
		"sessions":     {userAlice, xssUser, "mx"},
		"certificates": {popgateServerName, "file"},
		"backends":     {"mx", d.PlainAddr + ": up"},
		"routing":      {"Where does user"},
		"legacy":       {"none seen"},
	}
	for _, p := range pages {
		var imgs int
		b.check(p.name, "", chromedp.Navigate(base+p.path),
			chromedp.WaitVisible("main", chromedp.ByQuery),
			chromedp.Text("main", &text, chromedp.ByQuery),
			chromedp.Evaluate(`document.querySelectorAll("img").length`, &imgs),
			b.screenshot(p.name),
		)
		for _, w := range wants[p.name] {
			if !strings.Contains(text, w) {
				t.Errorf("%s page: %q not in %q", p.name, w, text)
			}
		}
		if imgs != 0 {
			t.Errorf("%s page: %d img elements, want none (an unescaped user name?)", p.name, imgs)
		}
	}

	// The sessions table shows the hostile name as text, in its own row.
	b.check("sessions", "", chromedp.Navigate(base+"/console/sessions"), chromedp.Text("main table", &text, chromedp.ByQuery))
	if !strings.Contains(text, xssUser) {
		t.Errorf("the sessions table does not show %q as text: %q", xssUser, text)
	}

	// End alice's sessions: the link leads to the confirmation, whose
	// button ends them.
	// The template escapes the name in the URL: alice%40example.com.
	endLink := fmt.Sprintf(`a[href="/console/end?user=%s"]`, url.QueryEscape(userAlice))
	var nodes []*cdp.Node
	b.check("end link", "", chromedp.Navigate(base+"/console/sessions?user="+userAlice),
		chromedp.Nodes(endLink, &nodes, chromedp.ByQueryAll, chromedp.AtLeast(0)))
	if len(nodes) == 0 {
		t.Fatalf("no link %s on the sessions page", endLink)
	}
	b.check("confirmation", "", chromedp.Click(endLink, chromedp.ByQuery),
		chromedp.WaitVisible("#confirm-end", chromedp.ByID),
		chromedp.Text("main", &text, chromedp.ByQuery),
		b.screenshot("end-confirm"))
	if !strings.Contains(text, userAlice) || strings.Contains(text, xssUser) {
		t.Errorf("the confirmation page names not just alice: %q", text)
	}
	if resp := alice.cmd("STAT"); !strings.HasPrefix(resp, "+OK") { // still relaying after the confirmation page
		t.Fatalf("STAT after the confirmation page: %q", resp)
	}
	b.check("end", "", chromedp.Click("#confirm-end", chromedp.ByID),
		chromedp.WaitVisible("p.ok", chromedp.ByQuery),
		chromedp.Text("main", &text, chromedp.ByQuery),
		b.screenshot("end-done"))
	if !strings.Contains(text, "Ended 1 session") {
		t.Errorf("after the confirmation: %q", text)
	}
	_ = alice.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := alice.r.ReadByte(); err == nil || isTimeout(err) {
		t.Errorf("alice's client is still connected after its session was ended (read %q, %v)", n, err)
	}
	d.waitLog(t, d.mainLog, "the end of alice's session", func(string) bool { return len(disconnected(userAlice)) > 0 })
	if r := disconnected(userAlice); len(r) != 1 || r[0] == "Logged out" {
		t.Errorf("Dovecot logged the end of alice's session as %q, want one disconnection without QUIT (not \"Logged out\")", r)
	} else {
		t.Logf("Dovecot logged the ended session as %q, a QUIT as \"Logged out\"", r[0])
	}
	// The hostile user's session was not ended and relays on.
	if resp := xss.cmd("STAT"); !strings.HasPrefix(resp, "+OK") {
		t.Errorf("STAT of the session not ended: %q", resp)
	}

	// The routing form, for a routed and an unrouted user.
	for _, tc := range []struct{ name, user, want string }{
		{"routed", userAlice, userAlice + " → mx"},
		{"unrouted", "nobody@example.com", "nobody@example.com: no route"},
	} {
		b.check("routing "+tc.name, "", chromedp.Navigate(base+"/console/routing"),
			chromedp.SendKeys("#user", tc.user, chromedp.ByID),
			chromedp.Submit("#user", chromedp.ByID),
			chromedp.WaitVisible("#answer", chromedp.ByID),
			chromedp.Text("#answer", &text, chromedp.ByID),
			b.screenshot("routing-"+tc.name))
		if !strings.Contains(text, tc.want) {
			t.Errorf("routing %s: %q, want %q", tc.user, text, tc.want)
		}
	}

	// Dovecot stopped: its address turns red, then green once it is back.
	if resp := xss.cmd("QUIT"); !strings.HasPrefix(resp, "+OK") {
		t.Fatalf("QUIT: %q", resp)
	}
	stopping := time.Now()
	if err := d.StopMain(); err != nil {
		t.Fatal(err)
	}
	took := backendHealth("down", stopping, interval*failures+slack)
	t.Logf("the backends page showed Dovecot down %v after its stop began (health_interval %v × health_failures %d)", took, interval, failures)
	b.check("backend down", "", b.screenshot("backends-down"))
	if err := d.StartMain(); err != nil {
		t.Fatal(err)
	}
	took = backendHealth("up", time.Now(), interval+slack)
	t.Logf("the backends page showed Dovecot up again %v after it answered", took)
	t.Logf("screenshots in %s", b.shots)
}
