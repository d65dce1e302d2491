package proxy

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/internal/tlsversion"
	"github.com/popgate/popgate/proxy/internal/pop3"
)

// login routes creds and logs in to the backend. It returns the backend
// connection on success; done is true when the session is to end. What the
// attempt's end means (the reply, the result counted and logged, the
// throttle's verdict, the failure's timing) is classify's to decide; login
// only carries it out.
func (sess *session) login(ctx context.Context, creds auth.Credentials) (bc *backendConn, done bool) {
	attempt := sess.failures + 1
	// The name as logged and listed (/sessions): bounded, since an
	// over-long one is refused below and may be anything (a password
	// typed into the wrong field, a flood).
	user := creds.User
	if len(user) > auth.MaxCredentialLen {
		user = strings.ToValidUTF8(user[:64], "") + "...(truncated)"
	}
	sess.setLogin(user, "")
	sess.debug("login", "user", user, "method", creds.Method, "attempt", attempt)
	// Unusable credentials are refused before anything else; they count
	// against the client's address only, so that an over-long name never
	// becomes a throttle key.
	err := creds.Check()
	throttleUser := sess.throttleUser(creds.User)
	if err != nil {
		err = &auth.DeniedError{Reason: err.Error()}
		throttleUser = ""
	}
	// The attempt holds its place in the throttle's budgets from before
	// the lookup until its outcome is known, so that attempts sent at
	// once cannot race past the limit.
	th := sess.cfg.Throttle
	var tk auth.Ticket
	if th != nil {
		bctx, cancel := context.WithDeadline(ctx, sess.deadline)
		var ok bool
		var wait time.Duration
		tk, ok, wait = th.Begin(bctx, sess.remote.Addr().Unmap(), throttleUser)
		cancel()
		if !ok {
			err = &throttledError{wait}
		}
	}
	// The attempt's time counts from here: a wait for a place in the
	// throttle says nothing of the name, and must not become a backend's
	// refusal time (failureTimes).
	start := time.Now()
	if err == nil {
		bc, err = sess.tryLogin(ctx, creds, attempt)
		if creds.User == "" {
			// OAUTHBEARER without "a=": the name is the verified
			// token's, once the router found it.
			user = sess.userName()
		}
	}
	out := classify(err, sess.cfg)
	th.End(tk, out.attempt)
	// A failed attempt's name is the client's invention: the legacy list
	// names only users that logged in, so made-up names cannot crowd
	// the real clients out of it (the address is noted either way).
	if err == nil {
		sess.noteLegacy(user)
	} else {
		sess.noteLegacy("")
	}
	if err == nil {
		sess.srv.obs.Login(sess.l.Name, out.result)
		sess.bw.WriteString(bc.reply)
		return bc, false
	}
	if ctx.Err() != nil {
		// The session was closed (shutdown, an operator) while the
		// login was under way: no failure of the client's, the
		// router's or the backend's; nothing to count or answer. The
		// throttle heard the outcome above: the attempt's own.
		sess.result = resultShutdown
		sess.lastErr = err
		return nil, true
	}
	sess.failures++
	sess.lastErr = err
	sess.result = out.result
	sess.srv.obs.Login(sess.l.Name, out.result)
	sess.logger().Log(context.Background(), out.level, "login failed", "user", user, "backend", sess.backend, "attempt", attempt, "reason", out.result, "err", err)
	if !sess.sleep(ctx, sess.failureWait(out, time.Since(start))) {
		sess.result = resultShutdown
		return nil, true
	}
	if out.attempt == auth.AttemptFailed && auth.IsTokenMethod(creds.Method) {
		// A refused token ends with RFC 7628's error exchange; an
		// issuer that is down or a throttled client gets the -ERR at
		// once, which clients take at any step.
		if !sess.oauthErrorExchange() {
			return nil, true
		}
	}
	sess.bw.WriteString(out.reply)
	if sess.failures >= sess.cfg.maxLoginFailures() {
		sess.bw.Flush()
		sess.logger().Info("too many failed logins, closing", "failures", sess.failures)
		return nil, true
	}
	return nil, false
}

// verdictGrace is how long past the login deadline a lookup's or a
// backend's verdict on credentials already sent is awaited (see tryLogin).
const verdictGrace = 15 * time.Second

// The login's own answers to the client, CRLF included. The RFC 3206 code
// tells a client what to do: [AUTH], ask the user for the password again;
// [SYS/TEMP], try again later without bothering the user.
const (
	// msgAuthFailed answers every refusal of credentials, whatever its
	// reason.
	msgAuthFailed = "-ERR " + pop3.CodeAuth + " Authentication failed\r\n"
	// msgTempFail answers a lookup's or a backend's trouble.
	msgTempFail = "-ERR " + pop3.CodeSysTemp + " Service temporarily unavailable, try again later\r\n"
	// msgThrottled answers an attempt the throttle refused.
	msgThrottled = "-ERR " + pop3.CodeSysTemp + " Too many failed logins, try again later\r\n"
)

// throttleUser returns the name a login counts under in the throttle: the
// user, or with MasterUserSeparator the master user a "user*master" name
// logs in as, so that guesses at the master's password spread over many
// user names share one budget, the one of the master's own logins
// ("master", or AUTH PLAIN with "master" as the authentication identity);
// and its local part when the Router compares local parts only
// ([auth.DomainBlind]), so that every domain shares the entry's budget.
func (sess *session) throttleUser(user string) string {
	if sep := sess.cfg.MasterUserSeparator; sep != "" {
		if i := strings.LastIndex(user, sep); i >= 0 && i+len(sep) < len(user) {
			user = user[i+len(sep):]
		}
	}
	// A source that compares local parts only finds one entry for
	// every domain: one budget for them all.
	return entryName(user, domainBlind(sess.cfg.Router))
}

// tryLogin routes creds and logs in to the backend: it returns the
// logged-in backend connection, or the failure as one of the typed errors
// classify knows.
func (sess *session) tryLogin(ctx context.Context, creds auth.Credentials, attempt int) (_ *backendConn, err error) {
	// A verdict on credentials already sent is awaited a little past the
	// login deadline, so that it counts: a backend answers a right
	// password at once and a wrong one after its failure delay, and a
	// guess timed to be cut off by login_timeout would otherwise tell a
	// right password (+OK) from a wrong one (closed) without the wrong
	// ones ever counting. The client, past its deadline, hears nothing.
	ctx, cancel := context.WithDeadline(ctx, sess.deadline.Add(verdictGrace))
	defer cancel()
	req := &auth.Request{
		Credentials: creds,
		Client:      sess.remote,
		Local:       sess.local,
		Listener:    sess.l.Name,
		TLS:         sess.tls != nil,
		Attempt:     attempt,
	}
	if sess.tls != nil {
		req.TLSVersion = tlsversion.OpenSSL(sess.tls.version)
		req.TLSCipher = cipherSuiteName(sess.tls.cipherSuite)
	}
	if auth.IsTokenMethod(creds.Method) {
		// A Router that does not verify tokens would route the login
		// by the client's name alone; one that names the backend's
		// password itself would log it in unchecked.
		if tv, ok := sess.cfg.Router.(auth.TokenVerifier); !ok || !tv.VerifiesTokens() {
			return nil, &lookupError{errors.New("a bearer-token login, but the router verifies no tokens; bearer tokens need an auth.OAuthRouter")}
		}
	}
	dec, err := sess.cfg.Router.Route(ctx, req)
	if err != nil {
		if errors.Is(err, auth.ErrNoRoute) || isDenied(err) {
			return nil, err
		}
		return nil, &lookupError{err}
	}
	if p := sess.cfg.Pools; p != nil && dec.Backend != "" && sess.cfg.Backends[dec.Backend] == nil {
		// The session is the mailbox's before its backend is chosen:
		// an operator's move that ends the mailbox's sessions around
		// its change of the affinity ends this one too if it got the
		// old backend.
		mailbox := sess.mailbox(creds, dec)
		sess.setPoolMailbox(auth.FoldUser(mailbox))
		backend, release, ok, aerr := p.Assign(ctx, dec.Backend, mailbox)
		if !ok || aerr != nil {
			sess.setPoolMailbox("")
		}
		if ok {
			if aerr != nil {
				return nil, &lookupError{aerr}
			}
			sess.pool, dec.Backend = dec.Backend, backend
			sess.poolRelease = release
			defer func() {
				// A failed attempt holds no backend: the next one
				// asks again.
				if err != nil {
					release(false)
					sess.poolRelease = nil
					sess.setPoolMailbox("")
				}
			}()
		}
	}
	name := creds.User
	if name == "" && auth.IsTokenMethod(creds.Method) {
		// The client named nobody (OAUTHBEARER without "a="): the
		// session is the verified token's user's.
		name = dec.Name
	}
	sess.setLogin(name, dec.Backend)
	b := sess.cfg.Backends[dec.Backend]
	switch {
	case b == nil && dec.Backend == "" && dec.Address != "" && auth.IsTokenMethod(creds.Method):
		// A token login is the master user's, whose secret opens
		// every mailbox: it goes only to a backend the configuration
		// names, with that backend's TLS settings, never in clear to
		// wherever a lookup points.
		return nil, &lookupError{errors.New("a bearer-token login's route names a bare address; set route.http.backend so that the master login goes to a configured backend")}
	case b == nil && dec.Backend == "" && dec.Address != "":
		// A bare address from a lookup service with no backend
		// settings to apply: plaintext, as nginx does.
		b = &Backend{Name: "(lookup)", Address: dec.Address}
		sess.setLogin(name, dec.Address)
	case b == nil:
		return nil, &lookupError{errors.New("route names unknown backend " + quote(dec.Backend))}
	}
	if dec.User == "" {
		dec.User, dec.Password = creds.User, creds.Password
	}
	if auth.IsTokenMethod(creds.Method) && dec.Password == creds.Password {
		// A router that does not verify bearer tokens (no
		// auth.OAuthRouter in front) would hand the client's token to
		// the backend as a password.
		return nil, &lookupError{errors.New("the router passed a bearer token on as a password; bearer tokens need an auth.OAuthRouter")}
	}
	authz, err := authorizationID(creds, dec, b)
	if err != nil {
		return nil, err
	}
	dec.AuthzID = authz
	switch {
	case authz != "":
		sess.backendUser = dec.User + " as " + authz
	case dec.User != creds.User:
		sess.backendUser = dec.User
	}
	// A router may rewrite the login; hold the result to the same rule.
	if err := (auth.Credentials{User: dec.User, Password: dec.Password, AuthzID: dec.AuthzID}).Check(); err != nil {
		return nil, &lookupError{errors.New("router returned unusable credentials: " + err.Error())}
	}
	ci := clientInfo{remote: sess.remote, local: sess.local, connID: sess.id, tls: sess.tls, logger: sess.logger}
	return sess.srv.dialBackend(ctx, sess.cfg, b, dec, ci)
}

// mailbox returns the name of the mailbox a login opens, which a pool
// assigns a backend to: the authorization identity when one is named (a
// master user opening another's mailbox), else the user the backend login
// names without a master user's "*master" suffix.
//
// Every branch keys alike: behind a Router that compares local parts
// only, an authorization identity's spelling of the mailbox is one entry
// with the user's own logins, so one affinity.
func (sess *session) mailbox(creds auth.Credentials, dec auth.Decision) string {
	return entryName(sess.mailboxName(creds, dec), domainBlind(sess.cfg.Router))
}

// mailboxName is mailbox's name before entryName.
func (sess *session) mailboxName(creds auth.Credentials, dec auth.Decision) string {
	switch {
	case dec.Mailbox != "":
		// The router says (an OAuthRouter's master login, split by
		// its own separator, which limits.master_user_separator need
		// not be).
		return dec.Mailbox
	case dec.AuthzID != "":
		return dec.AuthzID
	case creds.AuthzID != "" && dec.User == "":
		return creds.AuthzID
	}
	user := cmp.Or(dec.User, creds.User)
	if sep := sess.cfg.MasterUserSeparator; sep != "" {
		if i := strings.LastIndex(user, sep); i > 0 {
			user = user[:i]
		}
	}
	return user
}

// entryName is user as the Router finds its entry, which the throttle
// counts under and a pool keys the mailbox by: behind a Router that
// compares local parts only (blind), every domain of the name logs in to
// one entry, one mailbox, so the local part.
func entryName(user string, blind bool) string {
	if blind {
		return localPart(user)
	}
	return user
}

// PoolKey is the name a pool keys user's mailbox by under the current
// configuration, as logins key it: an operator's move of a user names
// the affinity its logins use.
func (s *Server) PoolKey(user string) string {
	return entryName(user, domainBlind(s.config().Router))
}

// authorizationID returns the SASL authorization identity to send to
// backend b with the login dec, or an error that refuses the login. A login
// acts as another identity only when someone who may decide said so
// explicitly:
//
//   - the route names the identity (Decision.AuthzID, auth_http's
//     Auth-Authzid answer): it is sent, and must be the one the client
//     asked for when the client asked for one;
//   - the route logs in with the client's own credentials and b relays
//     authorization identities (relay_authzid): the client's is sent, and
//     the backend checks with the client's own password whether the client
//     may act as it.
//
// A route that rewrote the login (a master user's name and password) and
// did not name the identity refuses one the client asked for: the master
// credentials would let any user act as any other (a client's authzid
// relayed with a lookup's master login). A *auth.DeniedError refuses the
// login as bad credentials; any other error is the configuration's fault.
func authorizationID(creds auth.Credentials, dec auth.Decision, b *Backend) (string, error) {
	asked := creds.AuthzID
	if strings.EqualFold(asked, creds.User) {
		asked = "" // acting as oneself is no request to act as another
	}
	if dec.AuthzID != "" {
		if asked != "" && dec.AuthzID != asked {
			return "", &auth.DeniedError{Reason: "SASL authorization identity " + quote(asked) + " differs from the one the route named"}
		}
		if !b.RelayAuthzID {
			return "", &lookupError{errors.New("route names an authorization identity but backend " + quote(b.Name) + " does not relay one (relay_authzid)")}
		}
		return dec.AuthzID, nil
	}
	if asked == "" {
		return "", nil
	}
	if !b.RelayAuthzID {
		return "", &auth.DeniedError{Reason: "SASL authorization identity differs from the user and backend " + quote(b.Name) + " does not relay it"}
	}
	if dec.User != creds.User || dec.Password != creds.Password {
		return "", &auth.DeniedError{Reason: "SASL authorization identity differs from the user and the route rewrote the login without naming it"}
	}
	return asked, nil
}

// sleep waits d unless ctx is done first (the session was closed).
func (sess *session) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	if until := time.Until(sess.deadline); d > until {
		d = max(until, 0)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// failureWait returns how long to wait before answering a login that
// failed with out after took. A refusal of credentials, whoever gave it
// (out.pad), first waits until it took the floor of failureTimes, so that
// timing tells no name apart; a backend's refusal is recorded there first
// (out.record). Then every failure waits out.delay.
func (sess *session) failureWait(out loginOutcome, took time.Duration) time.Duration {
	seed := sess.cfg.assumedFailureTime()
	if out.record != "" {
		sess.srv.failTimes.add(out.record, took, seed)
	}
	var pad time.Duration
	if out.pad {
		pad = max(sess.srv.failTimes.floor(seed)-took, 0)
	}
	return pad + out.delay
}

// The typed failures of a login, besides auth.ErrNoRoute and
// *auth.DeniedError from the Router and *backendRejected from the backend.

// throttledError is a login refused by the Throttle before any lookup.
type throttledError struct{ wait time.Duration }

func (e *throttledError) Error() string {
	return "too many failed logins; refused for " + e.wait.Round(time.Second).String()
}

// lookupError is a Router failure that is not a refusal, or a route that
// cannot be followed (an unknown backend, unusable credentials, an
// authorization identity the backend does not relay): the lookup's or the
// configuration's fault, not the client's.
type lookupError struct{ err error }

func (e *lookupError) Error() string { return "route lookup: " + e.err.Error() }
func (e *lookupError) Unwrap() error { return e.err }

func isDenied(err error) bool {
	var de *auth.DeniedError
	return errors.As(err, &de)
}

// loginOutcome is what the end of a login attempt means; classify decides
// it.
type loginOutcome struct {
	// result is the popgate_logins_total result ([Observer.Login]), the
	// failure's "reason" in the log and the session's result.
	result string
	// reply answers a failure, CRLF included. A success relays the
	// backend's own +OK (backendConn.reply) instead.
	reply string
	// level is the level of the "login failed" line: WARN for trouble an
	// operator should look at, INFO for what clients do.
	level slog.Level
	// attempt tells the throttle how the attempt ended: only a refusal
	// of credentials counts as a failure; a success clears the user's count.
	attempt auth.AttemptResult
	// pad holds the answer back until the attempt took the floor of
	// failureTimes (see failureWait): every refusal of credentials
	// takes as long as a backend's, whoever refused.
	pad bool
	// record names the backend whose refusal time failureTimes records
	// (lookupRefusals for a lookup's); "" records none. Refusals of
	// credentials set the floor; a name nobody has does not.
	record string
	// delay is waited before answering a failure, after any pad:
	// failure_delay, or a lookup's Auth-Wait when longer.
	delay time.Duration
}

// classify decides what a login attempt that ended with err means, for the
// client, popgate_logins_total, the log, the throttle and the failure's
// timing. It is the one place that decides; err is nil for a success, else
// one of the login's typed failures, first match wins:
//
//	*throttledError    the throttle refused the attempt; nothing was asked
//	auth.ErrNoRoute    nothing routes the user
//	*auth.DeniedError  the lookup (or popgate's own checks) refused the credentials
//	*lookupError       the lookup failed, or its route cannot be followed
//	*backendRejected   the backend answered the login -ERR
//	anything else      the backend could not be reached or broke off the login
//
// Every refusal of credentials, an unknown name's included, gets the same
// words (msgAuthFailed), the same timing (pad) and counts in the throttle,
// so that no user name can be probed; the log and the result tell them
// apart for the operator.
func classify(err error, cfg *Config) loginOutcome {
	if err == nil {
		return loginOutcome{result: LoginOK, level: slog.LevelInfo, attempt: auth.AttemptSucceeded}
	}
	var (
		te *throttledError
		le *lookupError
		br *backendRejected
		de *auth.DeniedError
	)
	denied := errors.As(err, &de)
	var out loginOutcome
	switch {
	case errors.As(err, &te):
		out = loginOutcome{result: LoginThrottled, reply: msgThrottled, level: slog.LevelInfo, attempt: auth.AttemptAborted}
	case errors.Is(err, auth.ErrNoRoute):
		out = loginOutcome{result: LoginNoRoute, reply: msgAuthFailed, level: slog.LevelInfo, attempt: auth.AttemptFailed, pad: true}
	case denied:
		out = loginOutcome{result: LoginAuthFailed, reply: msgAuthFailed, level: slog.LevelInfo, attempt: auth.AttemptFailed, pad: true}
		if de.Checked {
			// A lookup's check of the password (popgate's of a
			// directory's password_hash: bcrypt's or Argon2's time)
			// sets the floor too, or a name with a hash would be
			// refused later than one nobody has. A refusal that
			// checked nothing is fast and would lower it.
			out.record = lookupRefusals
		}
	case errors.As(err, &le):
		out = loginOutcome{result: LoginLookupError, reply: msgTempFail, level: slog.LevelWarn, attempt: auth.AttemptAborted}
	case errors.As(err, &br) && br.refusedCredentials():
		// The backend's words are not relayed by default: a backend
		// that words "no such user" apart from "wrong password" (or
		// only ends its sentence differently) would give names away.
		out = loginOutcome{result: LoginAuthFailed, reply: msgAuthFailed, level: slog.LevelInfo, attempt: auth.AttemptFailed, pad: true, record: br.backend}
		if cfg.RelayBackendErrors {
			out.reply = br.reply
		}
	case br != nil:
		// The case above found br: an answer that comes only after
		// the password was checked ([IN-USE], [LOGIN-DELAY]) or the
		// backend's own trouble ([SYS/...]), relayed as it is; no
		// guess, so it does not count.
		out = loginOutcome{result: LoginAuthFailed, reply: br.reply, level: slog.LevelInfo, attempt: auth.AttemptAborted}
	default:
		out = loginOutcome{result: LoginBackendError, reply: msgTempFail, level: slog.LevelWarn, attempt: auth.AttemptAborted}
	}
	out.delay = cfg.FailureDelay
	if denied && de.Wait > out.delay {
		out.delay = de.Wait // a lookup's Auth-Wait
	}
	return out
}

// refusedCredentials reports whether the backend refused the credentials,
// rather than answering after it checked them ([IN-USE], [LOGIN-DELAY])
// or reporting its own trouble ([SYS/TEMP], [SYS/PERM]). The code counts
// only where RFC 2449 §8 puts it, so that a backend echoing the user name
// cannot make a guess uncounted.
func (e *backendRejected) refusedCredentials() bool {
	switch code := pop3.ResponseCode(e.reply); {
	case code == pop3.CodeInUse, code == pop3.CodeLoginDelay, pop3.IsSys(code):
		return false
	}
	return true
}
