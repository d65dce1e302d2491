package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/popgate/popgate/auth"
	"github.com/popgate/popgate/proxy/internal/pop3"
)

// login routes creds and logs in to the backend. It returns the backend
// connection on success; done is true when the session is to end.
func (sess *session) login(ctx context.Context, creds auth.Credentials) (bc *backendConn, done bool) {
	attempt := sess.failures + 1
	sess.setLogin(creds.User, "")
	sess.debug("login", "user", creds.User, "method", creds.Method, "attempt", attempt)
	var reply string
	// Unusable credentials are refused before anything else; they count
	// against the client's address only, so that an over-long name never
	// becomes a throttle key.
	err := creds.Check()
	throttleUser := sess.throttleUser(creds.User)
	if err != nil {
		reply, err = msgAuthFailed, &auth.DeniedError{Reason: err.Error()}
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
			reply, err = msgThrottled, &throttledError{wait}
		}
	}
	// The attempt's time counts from here: a wait for a place in the
	// throttle says nothing of the name, and must not become a backend's
	// refusal time (failureTimes).
	start := time.Now()
	if err == nil {
		bc, reply, err = sess.tryLogin(ctx, creds, attempt)
	}
	th.End(tk, attemptResult(err))
	if err == nil {
		sess.srv.obs.Login(sess.l.Name, LoginOK)
		sess.bw.WriteString(reply)
		return bc, false
	}
	if ctx.Err() != nil {
		// The session was closed (shutdown, an operator) while the
		// login was under way: no failure of the client's, the
		// router's or the backend's; nothing to count or throttle.
		sess.result = resultShutdown
		sess.lastErr = err
		return nil, true
	}
	sess.failures++
	sess.lastErr = err
	lvl := slog.LevelInfo
	switch {
	case isThrottled(err):
		sess.result = resultThrottled
	case errors.Is(err, auth.ErrNoRoute):
		sess.result = resultNoRoute
	case isDenied(err):
		sess.result = resultAuthFailed
	case isLookupError(err):
		sess.result = resultLookupError
		lvl = slog.LevelWarn
	case isBackendRejected(err):
		sess.result = resultAuthFailed
	default:
		sess.result = resultBackendError
		lvl = slog.LevelWarn
	}
	sess.srv.obs.Login(sess.l.Name, sess.result)
	sess.logger().Log(context.Background(), lvl, "login failed", "user", creds.User, "backend", sess.backend, "attempt", attempt, "reason", sess.result, "err", err)
	if !sess.sleep(ctx, sess.failureWait(err, time.Since(start))) {
		sess.result = resultShutdown
		return nil, true
	}
	sess.bw.WriteString(reply)
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
// ("master", or AUTH PLAIN with "master" as the authentication identity).
func (sess *session) throttleUser(user string) string {
	if sep := sess.cfg.MasterUserSeparator; sep != "" {
		if i := strings.LastIndex(user, sep); i >= 0 {
			return user[i+len(sep):]
		}
	}
	return user
}

// tryLogin returns the line to send to the client (CRLF included) and, on
// success, the logged-in backend connection.
func (sess *session) tryLogin(ctx context.Context, creds auth.Credentials, attempt int) (*backendConn, string, error) {
	const authFailed = msgAuthFailed
	const tempFail = msgTempFail
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
		req.TLSVersion = auth.TLSVersionName(sess.tls.Version)
		req.TLSCipher = tls.CipherSuiteName(sess.tls.CipherSuite)
	}
	dec, err := sess.cfg.Router.Route(ctx, req)
	if err != nil {
		if errors.Is(err, auth.ErrNoRoute) || isDenied(err) {
			return nil, authFailed, err
		}
		return nil, tempFail, &lookupError{err}
	}
	sess.setLogin(creds.User, dec.Backend)
	b := sess.cfg.Backends[dec.Backend]
	switch {
	case b == nil && dec.Backend == "" && dec.Address != "":
		// A bare address from a lookup service with no backend
		// settings to apply: plaintext, as nginx does.
		b = &Backend{Name: "(lookup)", Address: dec.Address}
		sess.setLogin(creds.User, dec.Address)
	case b == nil:
		return nil, tempFail, &lookupError{errors.New("route names unknown backend " + quote(dec.Backend))}
	}
	if dec.User == "" {
		dec.User, dec.Password = creds.User, creds.Password
	}
	authz, err := authorizationID(creds, dec, b)
	if err != nil {
		if isDenied(err) {
			return nil, authFailed, err
		}
		return nil, tempFail, err
	}
	dec.AuthzID = authz
	switch {
	case authz != "":
		sess.loginUser = dec.User + " as " + authz
	case dec.User != creds.User:
		sess.loginUser = dec.User
	}
	// A router may rewrite the login; hold the result to the same rule.
	if err := (auth.Credentials{User: dec.User, Password: dec.Password, AuthzID: dec.AuthzID}).Check(); err != nil {
		return nil, tempFail, &lookupError{errors.New("router returned unusable credentials: " + err.Error())}
	}
	ci := clientInfo{remote: sess.remote, local: sess.local, connID: sess.id, tls: sess.tls, logger: sess.logger}
	bc, reply, err := sess.srv.dialBackend(ctx, sess.cfg, b, dec, ci)
	if err != nil {
		if isBackendRejected(err) {
			// A refusal of the credentials gets popgate's own words,
			// the same as an unknown name's: a backend that words
			// "no such user" apart from "wrong password" (or only
			// ends its sentence differently) would give names away.
			// Answers that come only after the password was checked
			// ([IN-USE], [LOGIN-DELAY]) and the backend's own trouble
			// ([SYS/...]) are relayed as they are.
			if !sess.cfg.RelayBackendErrors && isCredentialFailure(err) {
				reply = authFailed
			}
			return nil, reply, err
		}
		return nil, tempFail, err
	}
	return bc, reply, nil
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
// failed with err after took. A refusal of credentials, whoever gave it,
// first waits until it took the floor of failureTimes, so that timing
// tells no name apart; a backend's refusal is recorded there first. Then
// every failure waits failure_delay, or the lookup's Auth-Wait when longer.
func (sess *session) failureWait(err error, took time.Duration) time.Duration {
	var pad time.Duration
	if attemptResult(err) == auth.AttemptFailed {
		var br *backendRejected
		if errors.As(err, &br) {
			sess.srv.failTimes.add(br.backend, took, sess.cfg.assumedFailureTime())
		}
		pad = max(sess.srv.failTimes.floor(sess.cfg.assumedFailureTime())-took, 0)
	}
	d := sess.cfg.FailureDelay
	var de *auth.DeniedError
	if errors.As(err, &de) && de.Wait > d {
		d = de.Wait
	}
	return pad + d
}

func isDenied(err error) bool {
	var de *auth.DeniedError
	return errors.As(err, &de)
}

// throttledError is a login refused by the Throttle before any lookup.
type throttledError struct{ wait time.Duration }

func (e *throttledError) Error() string {
	return "too many failed logins; refused for " + e.wait.Round(time.Second).String()
}

func isThrottled(err error) bool {
	var te *throttledError
	return errors.As(err, &te)
}

// attemptResult tells the throttle how a login attempt ended.
func attemptResult(err error) auth.AttemptResult {
	switch {
	case err == nil:
		return auth.AttemptSucceeded
	case isCredentialFailure(err):
		return auth.AttemptFailed
	}
	return auth.AttemptAborted
}

// isCredentialFailure reports failures that count against the throttle:
// wrong credentials and unknown users, not broken backends or lookups.
func isCredentialFailure(err error) bool {
	var br *backendRejected
	if errors.As(err, &br) {
		// A locked mailbox or a backend in trouble is no guess. The
		// code counts only where RFC 2449 puts it, so that a backend
		// echoing the user name cannot make a guess uncounted.
		switch code := pop3.ResponseCode(br.reply); {
		case code == pop3.CodeInUse, code == pop3.CodeLoginDelay, pop3.IsSys(code):
			return false
		}
		return true
	}
	return errors.Is(err, auth.ErrNoRoute) || isDenied(err)
}

// lookupError wraps a Router failure that is not a refusal.
type lookupError struct{ err error }

func (e *lookupError) Error() string { return "route lookup: " + e.err.Error() }
func (e *lookupError) Unwrap() error { return e.err }

func isLookupError(err error) bool {
	var le *lookupError
	return errors.As(err, &le)
}
