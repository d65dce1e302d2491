package tlsconf

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// The approval hook: before a new order for an on-demand name popgate asks
// the provider's own system whether the name may have a certificate, as
// Caddy's on-demand TLS asks its "ask" endpoint: GET URL?domain=NAME, 2xx
// allows, anything else refuses. Unlike Caddy's, the answers are cached
// briefly and concurrent handshakes for a name share one request. It is a
// new input path, so: no redirects, no proxy from the environment, no
// credentials or client data sent, the response bounded, a timeout, and
// no answer is a refusal.
//
// A request is the hook's, not the handshake's: it is shared and its answer
// cached, so it goes on, up to the timeout, after the handshake that caused
// it has gone. So that handshakes opened and dropped for many names cannot
// make popgate hold a connection and a goroutine per name, outside every
// connection cap and the file descriptor budget's reserve, at most
// maxAskInFlight requests are under way at once; a name that would need
// one more is refused at once (fail closed), as if the hook had not
// answered.

// DefaultAskTimeout is ACMEConfig.AskTimeout when it is 0.
const DefaultAskTimeout = 5 * time.Second

const (
	askAllowTTL  = time.Minute      // an allowed name is not asked again for this long
	askDenyTTL   = time.Minute      // nor a refused one
	askErrorTTL  = 10 * time.Second // nor one the hook failed to answer for
	maxAskNames  = 4096             // answers kept, least recently used dropped
	maxAskBody   = 4 << 10          // of the response body, read and dropped (keeps the connection)
	maxAskHeader = 16 << 10         // response header bytes
	// maxAskInFlight bounds the requests to the hook under way at once,
	// and so its connections.
	maxAskInFlight = 32
	// askBusyWarnEvery spaces the WARN lines about refusals at the cap.
	askBusyWarnEvery = time.Minute
)

// errAskBusy is the failure of a name the hook was not asked about because
// maxAskInFlight requests were under way.
var errAskBusy = fmt.Errorf("%d requests to it are under way already", maxAskInFlight)

// approver asks the approval hook.
type approver struct {
	url     *url.URL
	client  *http.Client
	timeout time.Duration
	log     *slog.Logger
	now     func() time.Time // time.Now; replaced by tests

	mu      sync.Mutex
	answers *simplelru.LRU[string, askAnswer]
	flights map[string]*askFlight // requests under way, at most maxAskInFlight
	failing bool                  // the last request failed: report recovery, not every failure
	// busy counts the names refused at the cap since the last WARN
	// (busyWarned).
	busy       int
	busyWarned time.Time
}

// askAnswer is a cached answer: err nil and allowed, err nil and refused
// (status says by what), or the hook's failure.
type askAnswer struct {
	allowed bool
	status  int
	err     error
	until   time.Time
}

type askFlight struct {
	done chan struct{}
	ans  askAnswer
}

// askDeniedError is an order the approval hook refused.
type askDeniedError struct{ status int }

func (e *askDeniedError) Error() string {
	return fmt.Sprintf("the approval hook refused the order (HTTP %d)", e.status)
}

// askFailedError is an order refused because the approval hook did not
// answer (fail closed).
type askFailedError struct{ err error }

func (e *askFailedError) Error() string {
	return fmt.Sprintf("the approval hook did not answer, so no order: %v", e.err)
}

func (e *askFailedError) Unwrap() error { return e.err }

// CheckAskURL checks an approval hook URL (ACMEConfig.AskURL): http or
// https, a host, no credentials, no fragment.
func CheckAskURL(raw string) error {
	_, err := checkAskURL(raw)
	return err
}

func checkAskURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return nil, fmt.Errorf("not a URL: %w", err)
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, errors.New("not an http:// or https:// URL")
	case u.Host == "":
		return nil, errors.New("no host")
	case u.User != nil:
		return nil, errors.New("holds credentials; popgate sends none (put the hook on loopback or a private network)")
	case u.Fragment != "":
		return nil, errors.New("has a fragment")
	}
	return u, nil
}

// newApprover makes the hook's client; it contacts nobody.
func newApprover(raw string, timeout time.Duration, log *slog.Logger) (*approver, error) {
	u, err := checkAskURL(raw)
	if err != nil {
		return nil, fmt.Errorf("tlsconf: acme: approval hook URL: %w", err)
	}
	if timeout <= 0 {
		timeout = DefaultAskTimeout
	}
	lru, _ := simplelru.NewLRU[string, askAnswer](maxAskNames, nil) // err only for size <= 0
	return &approver{
		url:     u,
		timeout: timeout,
		log:     log,
		now:     time.Now,
		answers: lru,
		flights: map[string]*askFlight{},
		client: &http.Client{
			Transport: &http.Transport{
				Proxy:                  nil, // never an HTTP_PROXY from the environment
				DialContext:            (&net.Dialer{Timeout: timeout}).DialContext,
				TLSClientConfig:        &tls.Config{MinVersion: tls.VersionTLS12},
				TLSHandshakeTimeout:    timeout,
				ResponseHeaderTimeout:  timeout,
				MaxResponseHeaderBytes: maxAskHeader,
				MaxIdleConns:           4,
				MaxIdleConnsPerHost:    4,
				MaxConnsPerHost:        maxAskInFlight,
				IdleConnTimeout:        30 * time.Second,
			},
			// A redirect is an answer (a refusal), never followed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			Timeout:       timeout,
		},
	}, nil
}

// where names the hook in logs: without the query, which may hold a
// token of the hook's own.
func (p *approver) where() string {
	return p.url.Scheme + "://" + p.url.Host + p.url.Path
}

// allowed asks whether name may be ordered: nil means yes, an
// *askDeniedError no, an *askFailedError no answer (or no request, at
// maxAskInFlight). Concurrent calls for a name share one request; a caller
// gives up when ctx is done.
func (p *approver) allowed(ctx context.Context, name string) error {
	p.mu.Lock()
	if ans, ok := p.answers.Get(name); ok && p.now().Before(ans.until) {
		p.mu.Unlock()
		return ans.result()
	}
	f := p.flights[name]
	owner := f == nil
	if owner {
		if len(p.flights) >= maxAskInFlight {
			p.refuseBusyLocked(name)
			p.mu.Unlock()
			return &askFailedError{errAskBusy}
		}
		f = &askFlight{done: make(chan struct{})}
		p.flights[name] = f
	}
	p.mu.Unlock()
	if owner {
		// The request is not the caller's: it is shared, and its
		// answer cached.
		go p.ask(name, f)
	}
	select {
	case <-f.done:
		return f.ans.result()
	case <-ctx.Done():
		return &askFailedError{ctx.Err()}
	}
}

// refuseBusyLocked logs, at most every askBusyWarnEvery, that names are
// refused at maxAskInFlight. p.mu is held.
func (p *approver) refuseBusyLocked(name string) {
	p.busy++
	now := p.now()
	if !p.busyWarned.IsZero() && now.Sub(p.busyWarned) < askBusyWarnEvery {
		p.log.Debug("acme approval hook not asked: too many requests under way", "name", name)
		return
	}
	p.log.Warn("acme approval hook has too many requests under way; orders for more on-demand names are refused until they end",
		"hook", p.where(), "in_flight", maxAskInFlight, "refused", p.busy)
	p.busyWarned, p.busy = now, 0
}

func (a askAnswer) result() error {
	switch {
	case a.err != nil:
		return &askFailedError{a.err}
	case !a.allowed:
		return &askDeniedError{a.status}
	}
	return nil
}

// ask asks the hook about name once and caches the answer; it runs on
// its own goroutine, bounded by the timeout.
func (p *approver) ask(name string, f *askFlight) {
	ans := p.request(name)
	ttl := askAllowTTL
	switch {
	case ans.err != nil:
		ttl = askErrorTTL
	case !ans.allowed:
		ttl = askDenyTTL
	}
	ans.until = p.now().Add(ttl)
	p.mu.Lock()
	p.answers.Add(name, ans)
	delete(p.flights, name)
	wasFailing := p.failing
	p.failing = ans.err != nil
	p.mu.Unlock()
	f.ans = ans
	defer close(f.done) // after the log lines, which callers may look for

	switch {
	case ans.err != nil && !wasFailing:
		p.log.Warn("acme approval hook failed; orders for on-demand names are refused until it answers",
			"hook", p.where(), "name", name, "err", ans.err)
	case ans.err != nil:
		p.log.Debug("acme approval hook failed", "hook", p.where(), "name", name, "err", ans.err)
	case wasFailing:
		p.log.Info("acme approval hook answers again", "hook", p.where())
	}
	if ans.err == nil {
		p.log.Debug("acme approval hook answered", "name", name, "status", ans.status, "allowed", ans.allowed)
	}
}

// request sends GET URL?domain=name (name is a checked host name) and
// reads the answer.
func (p *approver) request(name string) askAnswer {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout)
	defer cancel()
	u := *p.url
	q := u.Query()
	q.Set("domain", name)
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return askAnswer{err: err}
	}
	req.Header.Set("User-Agent", "popgate")
	resp, err := p.client.Do(req)
	if err != nil {
		// Not the *url.Error: its text holds the whole URL, query
		// included.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return askAnswer{err: err}
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAskBody))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode <= 299:
		return askAnswer{allowed: true, status: resp.StatusCode}
	case resp.StatusCode >= 500:
		return askAnswer{status: resp.StatusCode, err: fmt.Errorf("HTTP %d", resp.StatusCode)}
	}
	return askAnswer{status: resp.StatusCode}
}
