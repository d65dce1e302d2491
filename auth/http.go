package auth

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// HTTP routes by asking a lookup service that speaks nginx's auth_http
// protocol (https://nginx.org/en/docs/mail/ngx_mail_auth_http_module.html),
// so that a service written for nginx's mail proxy works unchanged.
//
// The request is a GET to URL with these headers, as nginx sends them:
//
//	Host: <from URL>
//	Auth-Method: plain                 (USER/PASS, AUTH PLAIN and AUTH LOGIN alike)
//	Auth-User: <user, escaped>
//	Auth-Pass: <password, escaped>
//	Auth-Protocol: pop3
//	Auth-Login-Attempt: <1, 2, ...>
//	Client-IP: <client address>
//	Client-Host: <client address>
//	Auth-SSL: on                       (TLS only, with the two below when known)
//	Auth-SSL-Protocol: TLSv1.3
//	Auth-SSL-Cipher: TLS_AES_128_GCM_SHA256
//	Auth-Authzid: <authzid, escaped>   (popgate's extension; only when the client sent one)
//
// plus [HTTP.Header] (nginx's auth_http_header, for a shared secret). User
// and password are escaped as nginx escapes them (ngx_escape_uri with
// NGX_ESCAPE_MAIL_AUTH): space, "%" and the control bytes become %XX, so
// a service that url-decodes them gets the original back. Client-Host
// carries the address, never a name from reverse DNS: nginx resolves it for
// SMTP only, and a DNS answer with CR LF in the name let an attacker add
// header lines to nginx's request (CVE-2026-28753).
//
// The answer is read from the response headers; the body is ignored (and
// bounded). "Auth-Status: OK" is a success: "Auth-Backend: NAME" (popgate's
// extension) names a configured backend; without it Auth-Server (an IP
// address, as nginx requires) and Auth-Port give the address, used with the
// settings of [HTTP.Backend]. Auth-User and Auth-Pass, when present, replace
// the name and password sent to the backend (master-user logins); nginx
// takes them verbatim, not url-decoded, and so does popgate.
//
// Auth-Authzid (popgate's extension) carries the SASL PLAIN authorization
// identity of a client that asked to act as another user, so the service
// can decide. An "Auth-Authzid: NAME" in the answer allows the login to act
// as NAME ([Decision.AuthzID]); without it popgate refuses the identity
// whenever the answer rewrote the login (Auth-User or Auth-Pass): master
// credentials from the service must never open a mailbox the service did
// not name. A service written for nginx ignores the request header and
// never answers one, and keeps working for clients that send no
// authorization identity.
//
// Any other
// Auth-Status text is a refusal: a *[DeniedError] with the text (and
// Auth-Error-Code) in Reason, for the log only, and Auth-Wait (seconds) as
// Wait. "Auth-Status: WAIT" asks to ask again after Auth-Wait seconds; HTTP
// does, at most twice more. A timeout, a status other than 2xx (nginx
// ignores the status line; a service that answers 204 works), a redirect, a
// malformed or oversized answer is an error that is not a refusal, and the
// client gets "-ERR [SYS/TEMP]".
//
// The zero value with URL set is ready to use; fields must not change after
// the first Route. HTTP keeps its own http.Client (no proxy from the
// environment, bounded idle connections); [HTTP.Close] drops them.
type HTTP struct {
	// URL of the service, http:// or https://.
	URL string
	// Backend names the configured backend whose settings (TLS, server
	// name, client address) are used with a bare Auth-Server/Auth-Port
	// answer. "" leaves Decision.Backend empty: the caller dials the
	// address in plaintext, as nginx does.
	Backend string
	// KnownBackend, when not nil, reports whether an Auth-Backend name is
	// configured; an unknown name is an error, not a refusal.
	KnownBackend func(name string) bool
	// Timeout bounds one exchange with the service, connect to last byte;
	// 0 means 3s.
	Timeout time.Duration
	// Header is added to every request (a shared secret, say).
	Header http.Header
	// TLSConfig is used for an https:// URL; nil means Go's defaults.
	TLSConfig *tls.Config

	once   sync.Once
	client *http.Client
	closed atomic.Bool // Close was called: keep no connection open
}

const (
	defaultHTTPTimeout = 3 * time.Second
	// maxAuthHeaderBytes bounds the response headers, maxAuthBody the body
	// popgate reads (and ignores).
	maxAuthHeaderBytes = 16 << 10
	maxAuthBody        = 64 << 10
	// maxAuthWaitRetries bounds the re-asking after "Auth-Status: WAIT".
	maxAuthWaitRetries = 2
	// maxAuthWait caps a requested Auth-Wait.
	maxAuthWait = 30 * time.Second
	// maxReasonLen bounds the service's text kept in DeniedError.Reason.
	maxReasonLen = 200
)

func (h *HTTP) timeout() time.Duration {
	if h.Timeout > 0 {
		return h.Timeout
	}
	return defaultHTTPTimeout
}

func (h *HTTP) httpClient() *http.Client {
	h.once.Do(func() {
		d := &net.Dialer{Timeout: h.timeout(), KeepAlive: 30 * time.Second}
		tr := &http.Transport{
			Proxy:                  nil, // never HTTP_PROXY: passwords go in these requests
			DialContext:            d.DialContext,
			TLSClientConfig:        h.TLSConfig,
			TLSHandshakeTimeout:    h.timeout(),
			ResponseHeaderTimeout:  h.timeout(),
			MaxResponseHeaderBytes: maxAuthHeaderBytes,
			MaxIdleConns:           64,
			MaxIdleConnsPerHost:    64,
			MaxConnsPerHost:        256,
			IdleConnTimeout:        60 * time.Second,
			DisableCompression:     true,
		}
		h.client = &http.Client{
			Transport: tr,
			// Never follow a redirect: the credentials would go along.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	})
	return h.client
}

// Close closes the idle connections to the service and keeps none open
// from then on. HTTP still answers Route after Close (a session that began
// before a configuration reload logs in through the HTTP it began with):
// each lookup then closes its connection when it is done, and so does one
// that was under way when Close was called.
func (h *HTTP) Close() error {
	h.closed.Store(true)
	h.httpClient().CloseIdleConnections()
	return nil
}

// httpRule is what [HTTP.Lookup] says, for `popgate route`.
const httpRule = "would ask the HTTP service, which decides (and checks the password)"

// Lookup implements [Source] without asking the service, which needs the
// password: it says the service would decide.
func (h *HTTP) Lookup(context.Context, string) (backend, rule string, found bool, err error) {
	return "", httpRule, true, nil
}

// Decide implements [Decider]: it is Route.
func (h *HTTP) Decide(ctx context.Context, req *Request) (Decision, error) { return h.Route(ctx, req) }

// Route implements [Router] by asking the service.
func (h *HTTP) Route(ctx context.Context, req *Request) (Decision, error) {
	if err := req.Credentials.Check(); err != nil {
		return Decision{}, err
	}
	for try := 0; ; try++ {
		d, wait, err := h.ask(ctx, req)
		if err != nil || wait < 0 {
			return d, err
		}
		if try == maxAuthWaitRetries {
			return Decision{}, errors.New("auth: auth_http: service still says WAIT")
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return Decision{}, fmt.Errorf("auth: auth_http: waiting to ask again: %w", ctx.Err())
			case <-t.C:
			}
		}
	}
}

// ask makes one exchange. A wait >= 0 means the service answered WAIT.
func (h *HTTP) ask(ctx context.Context, req *Request) (Decision, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, h.timeout())
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, h.URL, nil)
	if err != nil {
		return Decision{}, -1, errors.New("auth: auth_http: bad URL")
	}
	for k, vs := range h.Header {
		for _, v := range vs {
			hr.Header.Add(k, v)
		}
	}
	attempt := max(req.Attempt, 1)
	hdr := hr.Header
	hdr.Set("User-Agent", "popgate")
	hdr.Set("Auth-Method", "plain")
	hdr.Set("Auth-User", escapeMailAuth(req.User))
	hdr.Set("Auth-Pass", escapeMailAuth(string(req.Password)))
	hdr.Set("Auth-Protocol", "pop3")
	hdr.Set("Auth-Login-Attempt", strconv.Itoa(attempt))
	if ip := req.Client.Addr(); ip.IsValid() {
		s := ip.Unmap().WithZone("").String()
		hdr.Set("Client-IP", s)
		hdr.Set("Client-Host", s)
	}
	if req.AuthzID != "" {
		hdr.Set("Auth-Authzid", escapeMailAuth(req.AuthzID))
	}
	if req.TLS {
		hdr.Set("Auth-SSL", "on")
		if v := escapeMailAuth(req.TLSVersion); v != "" {
			hdr.Set("Auth-SSL-Protocol", v)
		}
		if v := escapeMailAuth(req.TLSCipher); v != "" {
			hdr.Set("Auth-SSL-Cipher", v)
		}
	}
	// After Close: no keep-alive, and (run after the body is closed) no
	// connection left idle by a lookup that began before Close.
	hr.Close = h.closed.Load()
	defer func() {
		if h.closed.Load() {
			h.httpClient().CloseIdleConnections()
		}
	}()
	resp, err := h.httpClient().Do(hr)
	if err != nil {
		// *url.Error names the method and URL (without userinfo
		// password) and the cause; no header value is in it.
		return Decision{}, -1, fmt.Errorf("auth: auth_http: %w", err)
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, io.LimitReader(resp.Body, maxAuthBody+1))
	switch {
	case err != nil:
		return Decision{}, -1, fmt.Errorf("auth: auth_http: reading body: %w", err)
	case n > maxAuthBody:
		return Decision{}, -1, fmt.Errorf("auth: auth_http: body longer than %d bytes", maxAuthBody)
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		return Decision{}, -1, fmt.Errorf("auth: auth_http: service answered HTTP %d", resp.StatusCode)
	}
	return h.decide(resp.Header, req)
}

func (h *HTTP) decide(rh http.Header, req *Request) (Decision, time.Duration, error) {
	status, ok := single(rh, "Auth-Status")
	if !ok || status == "" {
		return Decision{}, -1, errors.New("auth: auth_http: answer without one Auth-Status")
	}
	var wait time.Duration
	if w, ok := single(rh, "Auth-Wait"); ok {
		// Like nginx, ignore a value that is not a number.
		if n, err := strconv.Atoi(w); err == nil && n > 0 {
			wait = min(time.Duration(min(n, 3600))*time.Second, maxAuthWait)
		}
	}
	switch status {
	case "OK":
	case "WAIT":
		return Decision{}, wait, nil
	default:
		reason := sanitizeReason(status, req.Password)
		if code, ok := single(rh, "Auth-Error-Code"); ok && code != "" {
			reason += " (Auth-Error-Code " + sanitizeReason(code, req.Password) + ")"
		}
		return Decision{}, -1, &DeniedError{Reason: "auth_http: " + reason, Wait: wait, Checked: true}
	}

	d := Decision{User: req.User, Password: req.Password}
	if u, ok := single(rh, "Auth-User"); ok {
		d.User = u
	}
	if p, ok := single(rh, "Auth-Pass"); ok {
		d.Password = Password(p)
	}
	if z, ok := single(rh, "Auth-Authzid"); ok {
		d.AuthzID = z
	} else if len(rh.Values("Auth-Authzid")) > 1 {
		return Decision{}, -1, errors.New("auth: auth_http: more than one Auth-Authzid")
	}
	if err := (Credentials{User: d.User, Password: d.Password, AuthzID: d.AuthzID}).Check(); err != nil {
		return Decision{}, -1, errors.New("auth: auth_http: unusable Auth-User, Auth-Pass or Auth-Authzid")
	}
	if name, ok := single(rh, "Auth-Backend"); ok {
		if name == "" || h.KnownBackend != nil && !h.KnownBackend(name) {
			return Decision{}, -1, fmt.Errorf("auth: auth_http: Auth-Backend names unknown backend %.64q", name)
		}
		d.Backend = name
		return d, -1, nil
	}
	server, ok1 := single(rh, "Auth-Server")
	port, ok2 := single(rh, "Auth-Port")
	if !ok1 || !ok2 {
		return Decision{}, -1, errors.New("auth: auth_http: OK without Auth-Server and Auth-Port (or Auth-Backend)")
	}
	ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(server, "["), "]"))
	if err != nil || ip.Zone() != "" {
		return Decision{}, -1, fmt.Errorf("auth: auth_http: Auth-Server %.64q is not an IP address", server)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return Decision{}, -1, fmt.Errorf("auth: auth_http: bad Auth-Port %.16q", port)
	}
	d.Backend = h.Backend
	d.Address = netip.AddrPortFrom(ip.Unmap(), uint16(p)).String()
	return d, -1, nil
}

// single returns the one value of header k. Repeated headers are refused
// rather than guessed at: two Auth-Status or Auth-Server lines are a broken
// (or smuggled) answer.
func single(h http.Header, k string) (string, bool) {
	vs := h.Values(k)
	if len(vs) != 1 {
		return "", false
	}
	return strings.TrimSpace(vs[0]), true
}

// escapeMailAuth escapes s as nginx's ngx_escape_uri(NGX_ESCAPE_MAIL_AUTH)
// does: " ", "%" and bytes below 0x20, plus DEL (which Go's HTTP client
// refuses in a header value).
func escapeMailAuth(s string) string {
	const hex = "0123456789ABCDEF"
	n := 0
	for i := 0; i < len(s); i++ {
		if needsMailAuthEscape(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if needsMailAuthEscape(c) {
			b = append(b, '%', hex[c>>4], hex[c&15])
		} else {
			b = append(b, c)
		}
	}
	return string(b)
}

func needsMailAuthEscape(c byte) bool { return c <= ' ' || c == '%' || c == 0x7f }

// sanitizeReason makes a service's text fit for a log line: bounded, no
// control bytes, and never the client's password (a service that echoes
// it back would otherwise put it in the log).
func sanitizeReason(s string, pass Password) string {
	if pass != "" {
		s = strings.ReplaceAll(s, string(pass), redacted)
		s = strings.ReplaceAll(s, escapeMailAuth(string(pass)), redacted) // as sent
	}
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return -1
		}
		return r
	}, s)
	if len(s) > maxReasonLen {
		s = strings.ToValidUTF8(s[:maxReasonLen], "") + "..."
	}
	return s
}
