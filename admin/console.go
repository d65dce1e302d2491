package admin

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/popgate/popgate/proxy"
)

// The operator's console: HTML pages under /console/, behind the admin
// token. A login form takes the token and sets a session cookie; every
// state-changing request (ending sessions, logging out) carries the
// session's CSRF token and must come from the console's own origin.

//go:embed console
var consoleFS embed.FS

const (
	consolePrefix = "/console/"
	cookieName    = "popgate_console"
	// consoleSessionTTL is how long a console login lasts.
	consoleSessionTTL = 8 * time.Hour
	// maxConsoleSessions bounds the console logins held; a new login
	// beyond it forgets the oldest.
	maxConsoleSessions = 64
	// maxFormBytes bounds the body of a console POST: its forms are a
	// few short fields.
	maxFormBytes = 16 << 10
	// routeTimeout bounds a routing question's lookup.
	routeTimeout = 10 * time.Second
)

// hsts is the Strict-Transport-Security of console pages served over TLS:
// a year, the value browsers' preload lists ask for, though not preloaded.
const hsts = "max-age=31536000"

// consoleHeaders are set on every console response: no script but the
// console's own files, no framing, no referrer, no type sniffing.
var consoleHeaders = map[string]string{
	"Content-Security-Policy": "default-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
	"X-Frame-Options":         "DENY",
	"Referrer-Policy":         "no-referrer",
	"X-Content-Type-Options":  "nosniff",
	"Cache-Control":           "no-store",
}

type consoleLogin struct {
	csrf     string
	token    [32]byte // digest of the admin token it logged in with
	expires  time.Time
	lastSeen time.Time
}

type console struct {
	m        *Metrics
	sessions Sessions
	access   func() Access
	log      *slog.Logger
	now      func() time.Time
	pages    map[string]*template.Template
	static   http.Handler

	mu     sync.Mutex
	logins map[[32]byte]*consoleLogin // by digest of the cookie's id

	refusals refusalLog
	// fails counts wrong tokens by address, shared with the guard; nil
	// counts nothing.
	fails *failBudget
}

func newConsole(m *Metrics, sessions Sessions, access func() Access, log *slog.Logger) *console {
	c := &console{m: m, sessions: sessions, access: access, log: log, now: time.Now,
		pages: make(map[string]*template.Template), logins: make(map[[32]byte]*consoleLogin)}
	funcs := template.FuncMap{
		"ago":   func(t time.Time) string { return since(c.now(), t) },
		"when":  func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") },
		"bytes": humanBytes,
		"join":  strings.Join,
	}
	names, err := fs.Glob(consoleFS, "console/*.html")
	if err != nil {
		panic(err)
	}
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "console/"), ".html")
		if base == "layout" {
			continue
		}
		c.pages[base] = template.Must(template.New("layout.html").Funcs(funcs).ParseFS(consoleFS, "console/layout.html", n))
	}
	static, _ := fs.Sub(consoleFS, "console/static")
	c.static = http.StripPrefix(consolePrefix+"static/", http.FileServerFS(static))
	return c
}

// ServeHTTP serves every path under /console/.
func (c *console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	for k, v := range consoleHeaders {
		w.Header().Set(k, v)
	}
	if r.TLS != nil {
		// Over HTTPS (metrics.tls) the browser is to keep to HTTPS for
		// this host name. No includeSubDomains: the console's name says
		// nothing of the names below it. Browsers ignore the header over
		// a connection whose certificate they had to be told to accept
		// and for IP addresses.
		w.Header().Set("Strict-Transport-Security", hsts)
	}
	a := c.access()
	if a.Token == "" {
		c.render(w, http.StatusNotFound, "off", nil, nil)
		return
	}
	path := strings.TrimPrefix(r.URL.Path, consolePrefix)
	if strings.HasPrefix(path, "static/") && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		// The style sheet and the icon: open, as the login form needs
		// them; no directory listing.
		if strings.HasSuffix(path, "/") {
			c.render(w, http.StatusNotFound, "notfound", nil, nil)
			return
		}
		c.static.ServeHTTP(w, r)
		return
	}
	if r.Method == http.MethodPost {
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	}
	if tok, bearer := bearerToken(r); bearer {
		// Whether a bearer token was right is answered only within the
		// address's budget of wrong ones; the login form's token is
		// counted by login.
		if ok, wait := c.fails.attempt(r.RemoteAddr, c.now(), !sameToken(tok, a.Token)); !ok {
			c.refuseOverBudget(w, r, wait)
			return
		}
	}
	if path == "login" {
		c.login(w, r, a)
		return
	}
	l := c.session(r, a)
	if l == nil {
		if ok, skipped := c.refusals.take(c.now()); ok {
			c.log.Warn("admin: console request without a login refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "refused_before", skipped)
		}
		w.Header().Set("WWW-Authenticate", realm)
		c.render(w, http.StatusUnauthorized, "unauthorized", nil, nil)
		return
	}
	if r.Method == http.MethodPost {
		if !c.postAllowed(r, l) {
			c.render(w, http.StatusForbidden, "forbidden", l, nil)
			return
		}
	} else if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD, POST")
		c.render(w, http.StatusMethodNotAllowed, "forbidden", l, nil)
		return
	}
	// Ending sessions takes GET (its confirmation) and POST, logging
	// out POST only, every other page GET and HEAD only.
	switch post := r.Method == http.MethodPost; {
	case path == "end":
		c.end(w, r, l)
	case path == "logout" && post:
		c.logout(w, r)
	case post:
		c.render(w, http.StatusNotFound, "notfound", l, nil)
	case path == "":
		c.render(w, http.StatusOK, "overview", l, c.overview())
	case path == "sessions":
		c.sessionsPage(w, r, l)
	case path == "certificates":
		c.render(w, http.StatusOK, "certificates", l, c.certificates())
	case path == "backends":
		c.render(w, http.StatusOK, "backends", l, c.backends())
	case path == "routing":
		c.routing(w, r, l)
	case path == "legacy":
		c.render(w, http.StatusOK, "legacy", l, c.m.LegacyClients())
	default:
		c.render(w, http.StatusNotFound, "notfound", l, nil)
	}
}

// pageData is what every page's template gets.
type pageData struct {
	CSRF string // "" when not logged in
	Page any
}

func (c *console) render(w http.ResponseWriter, code int, page string, l *consoleLogin, data any) {
	t := c.pages[page]
	var buf bytes.Buffer
	pd := pageData{Page: data}
	if l != nil {
		pd.CSRF = l.csrf
	}
	if err := t.Execute(&buf, pd); err != nil {
		c.log.Error("admin: console page", "page", page, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	w.Write(buf.Bytes()) // an error means the client went away
}

func digest(s string) [32]byte { return sha256.Sum256([]byte(s)) }

func randomToken() string {
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// session returns the request's live console login: by its cookie, made
// with the admin token now in force. A request with the admin bearer
// token instead is let in as well, without a CSRF token of its own (such
// a client sends no cookie a foreign page could ride on), so that POSTs
// stay refused.
func (c *console) session(r *http.Request, a Access) *consoleLogin {
	if tok, ok := bearerToken(r); ok {
		if sameToken(tok, a.Token) {
			return &consoleLogin{}
		}
		return nil // counted against the address's budget by ServeHTTP
	}
	now := c.now()
	want := digest(a.Token)
	c.mu.Lock()
	defer c.mu.Unlock()
	// Every cookie of the name, not the first only: another web service
	// on this host name (cookies do not tell ports apart) or a sibling
	// name's (Domain=) can set one with a longer Path, which the browser
	// sends first.
	for _, ck := range r.CookiesNamed(cookieName) {
		k := digest(ck.Value)
		l := c.logins[k]
		if l == nil {
			continue
		}
		if now.After(l.expires) || subtle.ConstantTimeCompare(l.token[:], want[:]) != 1 {
			delete(c.logins, k)
			continue
		}
		l.lastSeen = now
		cp := *l
		return &cp
	}
	return nil
}

// postAllowed checks a state-changing request: the login's CSRF token in
// the form, compared in constant time, and, as a second layer, an Origin
// or Referer naming this host when the browser sends one.
func (c *console) postAllowed(r *http.Request, l *consoleLogin) bool {
	if !sameOrigin(r) {
		return false
	}
	got := r.PostFormValue("csrf")
	if l.csrf == "" || got == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(l.csrf)) == 1
}

// sameOrigin reports whether the request comes from the console's own
// pages, as far as the browser says: its Sec-Fetch-Site must be
// "same-origin", or without one its Origin, or else its Referer, must
// name the host it was sent to. A request that says nothing (a terminal
// browser; "Origin: null", which browsers send for every POST from a page
// with "Referrer-Policy: no-referrer", as the console's are) passes: the
// CSRF token decides.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" {
		return site == "same-origin"
	}
	src := r.Header.Get("Origin")
	if src == "" || src == "null" {
		src = r.Header.Get("Referer")
		if src == "" {
			return true
		}
	}
	u, err := url.Parse(src)
	if err != nil {
		return false
	}
	return strings.EqualFold(u.Host, r.Host)
}

// login serves the login form and takes the token from it.
func (c *console) login(w http.ResponseWriter, r *http.Request, a Access) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		c.render(w, http.StatusOK, "login", nil, nil)
		return
	case http.MethodPost:
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		c.render(w, http.StatusMethodNotAllowed, "forbidden", nil, nil)
		return
	}
	if !sameOrigin(r) {
		c.render(w, http.StatusForbidden, "forbidden", nil, nil)
		return
	}
	right := sameToken(r.PostFormValue("token"), a.Token)
	if ok, wait := c.fails.attempt(r.RemoteAddr, c.now(), !right); !ok {
		c.refuseOverBudget(w, r, wait)
		return
	}
	if !right {
		if ok, skipped := c.refusals.take(c.now()); ok {
			c.log.Warn("admin: console login with a wrong token refused", "remote", r.RemoteAddr, "refused_before", skipped)
		}
		w.Header().Set("WWW-Authenticate", realm)
		c.render(w, http.StatusUnauthorized, "login", nil, "wrong token")
		return
	}
	id := randomToken()
	now := c.now()
	l := &consoleLogin{csrf: randomToken(), token: digest(a.Token), expires: now.Add(consoleSessionTTL), lastSeen: now}
	c.mu.Lock()
	for k, v := range c.logins {
		if now.After(v.expires) {
			delete(c.logins, k)
		}
	}
	for len(c.logins) >= maxConsoleSessions {
		var oldest [32]byte
		var t time.Time
		for k, v := range c.logins {
			if t.IsZero() || v.lastSeen.Before(t) {
				oldest, t = k, v.lastSeen
			}
		}
		delete(c.logins, oldest)
	}
	c.logins[digest(id)] = l
	c.mu.Unlock()
	c.log.Info("admin: console login", "remote", r.RemoteAddr)
	http.SetCookie(w, &http.Cookie{
		Name: cookieName, Value: id, Path: consolePrefix,
		MaxAge: int(consoleSessionTTL / time.Second), HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	})
	http.Redirect(w, r, consolePrefix, http.StatusSeeOther)
}

// refuseOverBudget refuses a request that offers a token from an address
// that has offered too many wrong ones.
func (c *console) refuseOverBudget(w http.ResponseWriter, r *http.Request, wait time.Duration) {
	if ok, skipped := c.refusals.take(c.now()); ok {
		c.log.Warn("admin: console request from an address with too many wrong tokens refused", "remote", r.RemoteAddr, "refused_before", skipped)
	}
	w.Header().Set("Retry-After", retryAfter(wait))
	c.render(w, http.StatusTooManyRequests, "login", nil, tooManyFailures(wait))
}

func (c *console) logout(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	for _, ck := range r.CookiesNamed(cookieName) {
		delete(c.logins, digest(ck.Value))
	}
	c.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: consolePrefix, MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	http.Redirect(w, r, consolePrefix+"login", http.StatusSeeOther)
}

type sessionsPage struct {
	User     string
	Sessions []proxy.SessionInfo
	Fleet    bool   // the fleet's sessions, with their nodes
	Partial  string // why the fleet's list is not whole
}

func (c *console) sessionsPage(w http.ResponseWriter, r *http.Request, l *consoleLogin) {
	p := sessionsPage{User: r.URL.Query().Get("user")}
	if c.sessions != nil {
		p.Sessions, p.Partial = listAll(r.Context(), c.sessions)
		_, p.Fleet = c.sessions.(FleetSessions)
	}
	if p.User != "" {
		p.Sessions = sessionsOf(c.sessions, p.Sessions, p.User)
	}
	c.render(w, http.StatusOK, "sessions", l, p)
}

type endPage struct {
	User, ID string
	Sessions []proxy.SessionInfo // those that would end
	Ended    int
	Done     bool
	Result   endResult // what ending did, by node in a fleet
	Partial  string    // why the list of those that would end is not whole
}

// end asks for a confirmation (GET, or a POST without confirm=yes) and
// then ends the sessions of a user or the one with an id (a POST with
// confirm=yes; the CSRF token was checked by ServeHTTP).
func (c *console) end(w http.ResponseWriter, r *http.Request, l *consoleLogin) {
	var q url.Values
	if r.Method == http.MethodPost {
		q = r.PostForm
	} else {
		q = r.URL.Query()
	}
	p := endPage{User: q.Get("user"), ID: q.Get("id")}
	if (p.User == "") == (p.ID == "") || c.sessions == nil {
		c.render(w, http.StatusBadRequest, "notfound", l, nil)
		return
	}
	if r.Method == http.MethodPost && q.Get("confirm") == "yes" {
		p.Result = endAll(r.Context(), c.sessions, p.User, p.ID)
		p.Ended = p.Result.Ended
		p.Result.logEnded(c.log, p.User, p.ID, "remote", r.RemoteAddr, "via", "console")
		p.Done = true
		c.render(w, http.StatusOK, "end", l, p)
		return
	}
	list, partial := listAll(r.Context(), c.sessions)
	p.Partial = partial
	if p.User != "" {
		p.Sessions = sessionsOf(c.sessions, list, p.User)
	} else {
		p.Sessions = slices.DeleteFunc(list, func(s proxy.SessionInfo) bool { return s.ID != p.ID })
	}
	c.render(w, http.StatusOK, "end", l, p)
}

type routingPage struct {
	User   string
	Asked  bool
	Answer RouteAnswer
	Err    string
	NoSrc  bool
}

func (c *console) routing(w http.ResponseWriter, r *http.Request, l *consoleLogin) {
	src := c.m.src.get()
	p := routingPage{User: r.URL.Query().Get("user"), NoSrc: src.Route == nil}
	if p.User != "" && src.Route != nil {
		p.Asked = true
		ctx, cancel := context.WithTimeout(r.Context(), routeTimeout)
		defer cancel()
		a, err := src.Route(ctx, p.User)
		if err != nil {
			p.Err = err.Error()
		}
		p.Answer = a
	}
	c.render(w, http.StatusOK, "routing", l, p)
}
