package tlsconf

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"
)

// Attempts. autocert obtains a certificate (a first order from
// GetCertificate, or a renewal from its own timer) under a context it makes
// for that one attempt: it reads the cache with it (the certificate's key,
// so the name and key type) and sends every request to the CA with it.
// caTransport and loggingCache see that context, so popgate can follow an
// attempt from the outside: count its orders, keep the CA's reasons for a
// failure, and see whether it stored a certificate.
//
// That is how autocert (golang.org/x/crypto v0.59.0) works; the Pebble
// interop tests fail should it change.
//
// autocert's order loop (verifyRFC) places a new order after any failed
// validation, for the next challenge type; once none is left, that order
// only ends in "no viable challenge type found", hiding the reason. Such an
// order is refused here before it reaches the CA, with the reason.

// caRequestTimeout bounds one request to the CA. (An http.Client.Timeout
// would replace the request's context, which identifies the attempt.)
const caRequestTimeout = 2 * time.Minute

// maxCauseLen bounds a CA-provided reason kept for errors and logs.
const maxCauseLen = 300

// attempt is what popgate learns of one of autocert's attempts.
type attempt struct {
	key      seenKey // zero until the cache read names it
	keyKnown bool
	// ticket is the order popgate asked autocert for that this attempt
	// carries out; nil for a renewal.
	ticket    *ticket
	contacted bool // it sent (or tried to send) a request to the CA
	stored    bool // it wrote a certificate to the cache
	// held is why popgate refused the order of a renewal before it
	// reached the CA (the policy, the back-off, an order of popgate's
	// for the name); nil if it did not.
	held *renewalHeldError
	// renewing: a renewal allowed an order, counted in
	// acmeState.renewing until it ends.
	renewing bool
	// fleetRelease releases the fleet's lock a renewal took
	// (fleetRenewal), with the back-off if it failed; nil if it took
	// none.
	fleetRelease func(backoff time.Duration)

	orders   int               // orders the CA accepted
	offered  map[string]bool   // challenge types of the last authorization
	tried    map[string]bool   // challenge types answered
	chalType map[string]string // challenge URL → type
	failures []string          // failed validations, "http-01: connection: ..."
	last     string            // the last error the CA (or the network) gave
}

// attemptFor returns the attempt ctx belongs to, making one (and ending it
// when ctx is done) if create is set. It returns nil for a context that
// cannot identify an attempt.
func (a *acmeState) attemptFor(ctx context.Context, create bool) *attempt {
	if ctx == nil || ctx.Done() == nil || !reflect.TypeOf(ctx).Comparable() {
		return nil
	}
	a.attMu.Lock()
	defer a.attMu.Unlock()
	if att := a.attempts[ctx]; att != nil || !create {
		return att
	}
	att := &attempt{offered: map[string]bool{}, tried: map[string]bool{}, chalType: map[string]string{}}
	a.attempts[ctx] = att
	context.AfterFunc(ctx, func() {
		a.attMu.Lock()
		delete(a.attempts, ctx)
		if att.renewing {
			if a.renewing[att.key.name]--; a.renewing[att.key.name] <= 0 {
				delete(a.renewing, att.key.name)
			}
		}
		release := att.fleetRelease
		a.attMu.Unlock()
		backoff := a.attemptEnded(att)
		if release != nil {
			release(backoff)
		}
	})
	return att
}

// ticket is an order popgate decided to place (order) and asked autocert
// for: its unit of the budget is taken in advance, and the attempt's first
// order uses it.
type ticket struct {
	class     orderClass
	bound     bool // an attempt carries it out
	used      bool // an order the CA accepted used its unit
	contacted bool // its attempt sent (or tried to send) a request to the CA
}

// attemptEnded reports an attempt popgate did not start (a renewal) that
// got as far as the CA: a metric, and an ERROR and the back-off if it
// obtained nothing; or, if popgate refused its order before it reached
// the CA, a DEBUG line only (autocert tries again within an hour). Orders
// popgate starts are reported by order. It returns the back-off it set
// (0 if none), for the fleet's lock.
func (a *acmeState) attemptEnded(att *attempt) time.Duration {
	a.attMu.Lock()
	renewal := att.ticket == nil && att.contacted && att.keyKnown
	k, stored, cause, held := att.key, att.stored, att.cause(), att.held
	if att.orders > 0 {
		held = nil // it placed an order: a renewal that failed
	}
	a.attMu.Unlock()
	if !renewal {
		return 0
	}
	switch {
	case stored:
		a.limiter.ok(k)
		a.observe(k, OrderIssued, "")
	case held != nil:
		a.log.Debug("acme renewal held back", "name", k.name, "key_type", k.keyType(), "reason", held.Reason, "err", held.Err)
	default:
		retry := domainOrderRetry
		if !a.allowed[k.name] {
			retry = a.limiter.retry
		}
		next := a.limiter.fail(k, retry)
		a.observe(k, OrderFailed, cause)
		a.log.Error("acme renewal failed", "name", k.name, "key_type", k.keyType(), "err", cause, "retry_after", next)
		return retry
	}
	return 0
}

// cause says why the attempt's last order failed. a.attMu is held.
func (att *attempt) cause() string {
	switch {
	case len(att.failures) > 0:
		return "validation failed: " + strings.Join(att.failures, "; ")
	case att.last != "":
		return att.last
	}
	return "no certificate obtained"
}

// cacheRead is called by loggingCache for every cache read: a read of a
// certificate's key starts (or names) the attempt of ctx.
func (a *acmeState) cacheRead(ctx context.Context, key string) {
	k, ok := parseCacheKey(key)
	if !ok {
		return
	}
	att := a.attemptFor(ctx, true)
	if att == nil {
		return
	}
	a.attMu.Lock()
	defer a.attMu.Unlock()
	if att.keyKnown {
		return
	}
	att.key, att.keyKnown = k, true
	if t := a.tickets[k]; t != nil && !t.bound {
		t.bound = true
		att.ticket = t
	}
}

// cacheWrote is called by loggingCache after every cache write: a
// certificate written is what an attempt obtained.
func (a *acmeState) cacheWrote(ctx context.Context, key string) {
	if _, ok := parseCacheKey(key); !ok {
		return
	}
	if att := a.attemptFor(ctx, false); att != nil {
		a.attMu.Lock()
		att.stored = true
		a.attMu.Unlock()
	}
}

// parseCacheKey reads an autocert cache key that holds a certificate.
func parseCacheKey(key string) (seenKey, bool) {
	if key == "acme_account+key" || strings.HasSuffix(key, "+token") || strings.HasSuffix(key, "+http-01") || strings.HasSuffix(key, ".key") {
		return seenKey{}, false
	}
	name, rsa := strings.CutSuffix(key, "+rsa")
	if strings.Contains(name, "+") {
		return seenKey{}, false
	}
	return seenKey{name, rsa}, true
}

// renewalHeldError is the order of a renewal that popgate refused before
// it reached the CA, for Reason: "policy" (the name is no longer in the
// policy), "backoff" (its last order failed recently), "busy" (an order
// of popgate's for the name is under way, here or on another replica of
// the fleet), "cluster" (the fleet's lock cannot be taken), "renewed"
// (another replica renewed the certificate) or "stopped" (orders are
// stopped: Server.StopOrders).
type renewalHeldError struct {
	Name   string
	Reason string
	Err    error
}

func (e *renewalHeldError) Error() string { return e.Err.Error() }

func (e *renewalHeldError) Unwrap() error { return e.Err }

// errNotInPolicy is the reason of a renewal refused for a name that is no
// longer in the policy.
var errNotInPolicy = errors.New("the name is no longer in tls.acme.domains or the on-demand policy")

// errOrderUnderWay is the reason of a renewal refused while an order of
// popgate's for the same name is under way.
var errOrderUnderWay = errors.New("an order for the name, of another key type, is under way")

// errUnknownAttempt refuses an order that popgate cannot tell the name of:
// autocert reads a certificate's cache entry, with the attempt's context,
// before it orders one (see the comment at the top of this file).
var errUnknownAttempt = errors.New("tlsconf: acme: an order for a name popgate does not know; refused")

// orderRefusedError is an order autocert wanted to place that could only
// fail: Cause is why the attempt's previous order failed.
type orderRefusedError struct {
	Name  string
	Cause string
}

func (e *orderRefusedError) Error() string { return e.Cause }

// caTransport is the ACME client's transport: it learns the CA's newOrder
// URL from the directory, refuses orders that cannot succeed, and records
// what the CA says about an attempt.
type caTransport struct {
	a        *acmeState
	next     http.RoundTripper
	dirURL   string
	answered []string // challenge types popgate answers

	mu       sync.Mutex
	newOrder string // from the directory
}

func (t *caTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	att := t.a.attemptFor(ctx, true)
	if att != nil {
		t.a.attMu.Lock()
		att.contacted = true
		if att.ticket != nil {
			att.ticket.contacted = true
		}
		if typ, ok := att.chalType[req.URL.String()]; ok && req.Method == http.MethodPost {
			att.tried[typ] = true
		}
		t.a.attMu.Unlock()
	}
	isOrder := req.Method == http.MethodPost && t.isNewOrder(req.URL.String())
	var paid payment
	if isOrder {
		var err error
		if paid, err = t.mayOrder(ctx, att); err != nil {
			if att != nil {
				t.note(att, err.Error())
			}
			return nil, err
		}
	}

	rctx, cancel := context.WithTimeout(ctx, caRequestTimeout)
	resp, err := t.next.RoundTrip(req.WithContext(rctx))
	if err != nil {
		cancel()
		t.refund(att, paid)
		if att != nil {
			t.note(att, err.Error())
		}
		return nil, err
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
	if isOrder && resp.StatusCode != http.StatusCreated {
		t.refund(att, paid) // not placed
	}
	dir := req.Method == http.MethodGet && req.URL.String() == t.dirURL
	if att == nil && !dir {
		return resp, nil
	}
	body, err := peekBody(resp)
	if err != nil {
		return nil, err
	}
	switch {
	case dir:
		var d struct {
			NewOrder string `json:"newOrder"`
		}
		if json.Unmarshal(body, &d) == nil && d.NewOrder != "" {
			t.mu.Lock()
			t.newOrder = d.NewOrder
			t.mu.Unlock()
		}
	case resp.StatusCode >= 400:
		t.note(att, problemText(resp.Status, body))
	case isOrder:
		t.a.attMu.Lock()
		att.orders++
		t.a.attMu.Unlock()
	default:
		t.record(att, body)
	}
	return resp, nil
}

// payment is how an order was paid for.
type payment int

const (
	paidNothing payment = iota // not an order
	paidTicket                 // the ticket's unit, taken by order
	paidBudget                 // a unit taken from the budget here
)

// refund gives back what an order that the CA did not accept cost.
func (t *caTransport) refund(att *attempt, p payment) {
	switch p {
	case paidTicket:
		t.a.attMu.Lock()
		att.ticket.used = false
		t.a.attMu.Unlock()
	case paidBudget:
		t.a.budget.give()
	}
}

func (t *caTransport) isNewOrder(url string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.newOrder != "" && url == t.newOrder
}

// mayOrder decides on an order the attempt is about to place and pays for
// it. It refuses a further order of an attempt whose previous order failed
// when no challenge type is left that it could try (autocert's order loop
// would place it and then give up with "no viable challenge type found"),
// and an order the budget has no room for. The first order of an attempt
// popgate started is paid by its ticket; any other is paid here, at the
// priority of the attempt's ticket.
//
// An attempt popgate did not start is a renewal (autocert's timer): its
// order is refused for a name no longer in the policy, while the back-off
// holds the certificate, and while an order of popgate's for the name is
// under way (their TLS-ALPN-01 challenge certificates would collide:
// autocert keeps them by name only); in a fleet, unless it takes the
// fleet's lock of the name and the certificate was not renewed by
// another replica meanwhile (fleetRenewal); once allowed, it holds back
// popgate's orders for the name until it ends. It is paid as a renewal
// for a name of Domains and as an on-demand order (leaving the reserve)
// for any other. An order of no known attempt is refused.
func (t *caTransport) mayOrder(ctx context.Context, att *attempt) (payment, error) {
	if att == nil {
		return paidNothing, errUnknownAttempt
	}
	t.a.attMu.Lock()
	if !att.keyKnown {
		t.a.attMu.Unlock()
		return paidNothing, errUnknownAttempt
	}
	if t.a.stopped.Load() {
		// After Server.StopOrders: the new process orders.
		tk, k := att.ticket, att.key
		t.a.attMu.Unlock()
		if tk != nil {
			t.a.log.Debug("acme order held back: orders are stopped (this process has handed over to a new one, which orders)", "name", k.name, "key_type", k.keyType())
			return paidNothing, errOrdersStopped
		}
		return paidNothing, t.hold(att, &renewalHeldError{Name: k.name, Reason: "stopped", Err: errOrdersStopped})
	}
	if err := t.retryUseless(att); err != nil {
		t.a.attMu.Unlock()
		return paidNothing, err
	}
	tk, k := att.ticket, att.key
	if tk != nil && att.orders == 0 && !tk.used {
		tk.used = true
		t.a.attMu.Unlock()
		return paidTicket, nil
	}
	t.a.attMu.Unlock()
	var class orderClass
	switch {
	case tk != nil:
		class = tk.class
	case t.a.allowed[k.name]:
		class = classRenewal
	default:
		class = classOnDemand
		if !t.a.inPolicy(k.name) {
			return paidNothing, t.hold(att, &renewalHeldError{Name: k.name, Reason: "policy", Err: errNotInPolicy})
		}
	}
	if tk == nil {
		if next, blocked := t.a.limiter.blocked(k); blocked {
			return paidNothing, t.hold(att, &renewalHeldError{Name: k.name, Reason: "backoff", Err: &heldBackError{next}})
		}
		t.a.attMu.Lock()
		if t.a.ordering[k.name] != nil {
			t.a.attMu.Unlock()
			return paidNothing, t.hold(att, &renewalHeldError{Name: k.name, Reason: "busy", Err: errOrderUnderWay})
		}
		var release func(backoff time.Duration)
		if t.a.fleet != nil {
			t.a.attMu.Unlock()
			var held *renewalHeldError
			if release, held = t.a.fleetRenewal(ctx, att, k); held != nil {
				return paidNothing, t.hold(att, held)
			}
			t.a.attMu.Lock()
		}
		if err := ctx.Err(); err != nil {
			// The attempt has ended, and its end may have been
			// handled already (attemptFor): what is added to it now
			// would never be undone.
			t.a.attMu.Unlock()
			if release != nil {
				release(0)
			}
			return paidNothing, err
		}
		if release != nil {
			att.fleetRelease = release
		}
		if !att.renewing {
			att.renewing = true
			t.a.renewing[k.name]++
		}
		t.a.attMu.Unlock()
	}
	ok, next, first := t.a.budget.take(class)
	if !ok {
		if first {
			t.a.budgetExhausted(next)
		}
		return paidNothing, &budgetError{next}
	}
	return paidBudget, nil
}

// hold records on att that its order was refused as e says, and returns e.
func (t *caTransport) hold(att *attempt, e *renewalHeldError) error {
	t.a.attMu.Lock()
	defer t.a.attMu.Unlock()
	att.held = e
	return e
}

// retryUseless refuses a further order of att that could only fail (see
// mayOrder). a.attMu is held.
func (t *caTransport) retryUseless(att *attempt) error {
	if att.orders == 0 {
		return nil
	}
	left := 0
	for _, typ := range t.answered {
		if att.offered[typ] && !att.tried[typ] {
			left++
		}
	}
	if left > 0 && att.orders < len(t.answered) {
		return nil
	}
	cause := "the previous order failed"
	switch {
	case len(att.failures) > 0:
		cause = att.cause()
	case att.last != "":
		cause += ": " + att.last
	}
	return &orderRefusedError{Name: att.key.name, Cause: cause}
}

// note records err as the attempt's latest trouble.
func (t *caTransport) note(att *attempt, err string) {
	t.a.attMu.Lock()
	defer t.a.attMu.Unlock()
	att.last = clip(err)
}

// record reads an ACME object the CA sent (RFC 8555 §7.1.3, §7.1.4): an
// authorization's challenges (their types, URLs and, when invalid, the
// errors), an invalid order's error.
func (t *caTransport) record(att *attempt, body []byte) {
	var obj struct {
		Status     string          `json:"status"`
		Identifier json.RawMessage `json:"identifier"`
		Challenges []struct {
			Type  string   `json:"type"`
			URL   string   `json:"url"`
			Error *problem `json:"error"`
		} `json:"challenges"`
		Error *problem `json:"error"`
	}
	if json.Unmarshal(body, &obj) != nil {
		return
	}
	t.a.attMu.Lock()
	defer t.a.attMu.Unlock()
	if obj.Identifier != nil && obj.Challenges != nil { // an authorization
		// Only a pending authorization lists every challenge offered
		// (Let's Encrypt keeps only the one tried in a finished one).
		if obj.Status == "pending" {
			clear(att.offered)
		}
		for _, c := range obj.Challenges {
			if obj.Status == "pending" {
				att.offered[c.Type] = true
			}
			att.chalType[c.URL] = c.Type
			if obj.Status != "invalid" || c.Error == nil {
				continue
			}
			if f := clip(c.Type + ": " + c.Error.String()); !slices.Contains(att.failures, f) {
				att.failures = append(att.failures, f)
			}
		}
		return
	}
	if obj.Status == "invalid" && obj.Error != nil {
		att.last = clip("order invalid: " + obj.Error.String())
	}
}

// problem is an RFC 7807 problem document, as ACME CAs send errors.
type problem struct {
	Type   string `json:"type"`
	Detail string `json:"detail"`
}

func (p *problem) String() string {
	typ := strings.TrimPrefix(p.Type, "urn:ietf:params:acme:error:")
	switch {
	case typ == "":
		return p.Detail
	case p.Detail == "":
		return typ
	}
	return typ + ": " + p.Detail
}

// problemText describes an error response.
func problemText(status string, body []byte) string {
	var p problem
	if json.Unmarshal(body, &p) == nil && (p.Type != "" || p.Detail != "") {
		return status + ": " + p.String()
	}
	return status
}

// clip bounds a text from the CA and makes it one printable line.
func clip(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxCauseLen {
		s = s[:maxCauseLen] + "…"
	}
	return s
}

// peekBody reads resp's body (bounded) and puts it back.
func peekBody(resp *http.Response) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxACMEResponse+1))
	if err != nil {
		resp.Body.Close()
		return nil, fmt.Errorf("tlsconf: acme: read response: %w", err)
	}
	rest := resp.Body
	resp.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(body), rest), rest}
	return body, nil
}

// cancelBody ends a request's context when its body is closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}
