// Package ldapsource routes logins by the entries of an LDAP directory
// ([route.ldap]): OpenLDAP's inetOrgPerson with a mailHost attribute, say,
// as a Dovecot or Postfix setup already keeps them.
//
// For each login a [Source] searches the directory for the user's entry
// with a filter made from a template ([Config.Filter]) and turns the entry
// into the login's decision by the rules of [auth.Directory]: where the
// login goes (a backend attribute naming a configured backend, or a host
// attribute such as mailHost), the name and password to log in there with
// (a master user's), the password hash to check first, and whether the
// account is enabled.
//
// What the directory says is untrusted. The user's name reaches the filter
// only escaped (RFC 4515: "*", "(", ")", "\", NUL and every byte above
// 0x7f become \XX), so no name can change the filter's meaning. An answer
// is bounded (a search reads at most [maxAnswer] bytes; a value longer
// than [auth.MaxCredentialLen] is an error), an attribute expected once
// that holds two values is an error, and so is a search that matches more
// than one entry (size limit 2): the login fails with "-ERR [SYS/TEMP]"
// and the error is logged, never guessed at. Referrals are never
// followed: a continuation reference is ignored and a referral answer is
// an error.
//
// Connections: a small pool ([Config.Connections]) of connections that
// have done StartTLS (or ldaps://) and bound as the service account. A
// connection that failed in any way is closed, not reused; one the server
// closed is noticed and replaced; a search that fails on a reused
// connection because that connection was dead is tried once more on a
// new one, so the first login after the directory comes back works. Every
// lookup, from waiting for a connection to the search's last byte, is
// bounded by [Config.Timeout].
package ldapsource

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/popgate/popgate/auth"
)

// Attributes names the attributes of a user's entry that the decision is
// made of (see [auth.Entry]). An empty name is not asked for. Names are
// matched without regard to case.
type Attributes struct {
	Backend      string // a configured backend's name
	Host         string // a host name or IP address (mailHost)
	Port         string // the port to use with Host; Config.Port when empty or absent
	Login        string // the name to log in to the backend with (a master user's "user*master")
	Password     string // the password to log in with (a master user's); needs PasswordHash
	PasswordHash string // {SCHEME}hash, checked against the client's password first
	Enabled      string // TRUE/FALSE (also yes/no, 1/0); absent means enabled
}

// list returns the attribute names to ask for.
func (a Attributes) list() []string {
	var l []string
	for _, n := range []string{a.Backend, a.Host, a.Port, a.Login, a.Password, a.PasswordHash, a.Enabled} {
		if n != "" {
			l = append(l, n)
		}
	}
	return l
}

// Config configures a [Source].
type Config struct {
	// URL is ldap://host[:port] (StartTLS) or ldaps://host[:port]; no
	// path, query or user information.
	URL string
	// Plaintext uses an ldap:// URL without StartTLS: the bind password
	// and every user name cross the network in clear text. For a
	// directory on loopback only.
	Plaintext bool
	// TLSConfig verifies the server (StartTLS and ldaps://); its
	// ServerName must be set (the URL's host).
	TLSConfig *tls.Config
	// BindDN and BindPassword are the service account's; an empty BindDN
	// searches anonymously.
	BindDN       string
	BindPassword auth.Password
	// Base is the DN the search starts at; Scope is ldap.ScopeBaseObject,
	// ldap.ScopeSingleLevel or ldap.ScopeWholeSubtree.
	Base  string
	Scope int
	// Filter is the search filter, with the placeholders %u (the user
	// name as the client sent it), %n (its local part: before the last
	// "@", or all of it), %d (its domain: after the last "@", or empty)
	// and %% (a "%"). Each value is escaped (RFC 4515) where it goes.
	Filter string
	// Attributes names the attributes the decision is made of.
	Attributes Attributes
	// Port is the port used with a host answer whose entry has no port
	// attribute (or an empty one).
	Port string
	// Timeout bounds one lookup: waiting for a connection, connecting,
	// StartTLS and bind when a new connection is needed, the search, and
	// the wait for a turn to check a password hash. 0 means 3s.
	Timeout time.Duration
	// Connections is the most connections open at once (and lookups
	// under way); 0 means 4.
	Connections int
	// Directory turns an entry into a decision: its Source ("route.ldap"),
	// Backend (the settings used with a host answer), KnownBackend and
	// Hashes.
	Directory auth.Directory
	// Observer, when set, sees every search (the metrics).
	Observer auth.LookupObserver
}

const (
	defaultTimeout     = 3 * time.Second
	defaultConnections = 4
	// maxAnswer bounds the bytes read from the server for one search (or
	// for connecting: StartTLS and bind). An entry with the few
	// attributes asked for is well under 4 KiB; a directory that sends
	// more (huge values, endless references) is cut off and its
	// connection closed.
	maxAnswer = 64 << 10
	// maxIdle is how long an idle connection is kept. An older one is
	// closed rather than reused: a firewall may have forgotten it
	// without either end knowing, and the search would wait out the
	// timeout.
	maxIdle = time.Minute
	// maxReason bounds the server's text kept in an error.
	maxReason = 200
)

// Source is the [route.ldap] routing source: an [auth.Decider] (and an
// [auth.Router], for an [auth.Cache] in front of it) and an [auth.Pooled].
// It is safe for concurrent use.
type Source struct {
	cfg     Config
	addr    string // host:port to dial
	ldaps   bool
	filter  []filterPart
	noDom   bool // the filter has %n but neither %u nor %d
	attrs   []string
	timeout time.Duration

	slots  chan struct{} // one per connection in use
	mu     sync.Mutex
	idle   []*conn // most recently used last
	inUse  int
	closed bool
}

// New checks cfg and returns a Source. It connects to nothing: the first
// lookup does.
func New(cfg Config) (*Source, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "ldap" && u.Scheme != "ldaps") || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("url %q is not ldap://host[:port] or ldaps://host[:port]", cfg.URL)
	}
	s := &Source{cfg: cfg, ldaps: u.Scheme == "ldaps", timeout: cfg.Timeout}
	port := u.Port()
	if port == "" {
		port = ldap.DefaultLdapPort
		if s.ldaps {
			port = ldap.DefaultLdapsPort
		}
	}
	s.addr = net.JoinHostPort(u.Hostname(), port)
	if s.ldaps && cfg.Plaintext {
		return nil, errors.New("an ldaps:// URL is always encrypted: plaintext applies to ldap:// only")
	}
	if !cfg.Plaintext && (cfg.TLSConfig == nil || cfg.TLSConfig.ServerName == "" && !cfg.TLSConfig.InsecureSkipVerify) {
		return nil, errors.New("no TLS configuration with a server name to verify the directory's certificate")
	}
	if cfg.BindDN == "" && cfg.BindPassword != "" {
		return nil, errors.New("a bind password without a bind DN")
	}
	switch cfg.Scope {
	case ldap.ScopeBaseObject, ldap.ScopeSingleLevel, ldap.ScopeWholeSubtree:
	default:
		return nil, fmt.Errorf("unknown scope %d", cfg.Scope)
	}
	if s.filter, err = parseFilter(cfg.Filter); err != nil {
		return nil, err
	}
	var uses [256]bool
	for _, p := range s.filter {
		uses[p.ph] = true
	}
	s.noDom = uses['n'] && !uses['u'] && !uses['d']
	a := cfg.Attributes
	if a.Backend == "" && a.Host == "" {
		return nil, errors.New("no attribute names a backend or a host: set the backend or host attribute")
	}
	if a.Password != "" && a.PasswordHash == "" {
		return nil, errors.New("a password attribute needs a password_hash attribute: popgate hands a master password " +
			"only to a client whose own password it checked")
	}
	if a.Host != "" && a.Port == "" && cfg.Port == "" {
		return nil, errors.New("a host attribute needs a port: a port attribute or a port for every host")
	}
	s.attrs = a.list()
	if s.timeout <= 0 {
		s.timeout = defaultTimeout
	}
	n := cfg.Connections
	if n <= 0 {
		n = defaultConnections
	}
	s.slots = make(chan struct{}, n)
	return s, nil
}

// CheckFilter reports whether tmpl is a filter template [New] accepts
// (see [Config.Filter]).
func CheckFilter(tmpl string) error {
	_, err := parseFilter(tmpl)
	return err
}

// filterPart is a piece of the filter template: literal text, or the
// value a placeholder stands for.
type filterPart struct {
	text string
	ph   byte // 'u', 'n', 'd'; 0 for literal text
}

// parseFilter splits a filter template into parts and checks that it
// makes a valid filter with any values.
func parseFilter(tmpl string) ([]filterPart, error) {
	if tmpl == "" {
		return nil, errors.New("no filter")
	}
	var parts []filterPart
	var lit strings.Builder
	uses := false
	for i := 0; i < len(tmpl); i++ {
		c := tmpl[i]
		if c != '%' {
			lit.WriteByte(c)
			continue
		}
		if i+1 == len(tmpl) {
			return nil, fmt.Errorf("filter %q ends in a lone %%; write %%%% for a %%", tmpl)
		}
		i++
		switch p := tmpl[i]; p {
		case '%':
			lit.WriteByte('%')
		case 'u', 'n', 'd':
			if lit.Len() > 0 {
				parts = append(parts, filterPart{text: lit.String()})
				lit.Reset()
			}
			parts = append(parts, filterPart{ph: p})
			uses = true
		default:
			return nil, fmt.Errorf("filter %q: unknown placeholder %%%c (use %%u, %%n, %%d or %%%%)", tmpl, p)
		}
	}
	if lit.Len() > 0 {
		parts = append(parts, filterPart{text: lit.String()})
	}
	if !uses {
		return nil, fmt.Errorf("filter %q names no user: use %%u (or %%n and %%d)", tmpl)
	}
	for _, user := range []string{"alice@example.com", "*)(|(uid=*", "x"} {
		f := makeFilter(parts, user)
		if _, err := ldap.CompileFilter(f); err != nil {
			return nil, fmt.Errorf("filter %q is not a valid LDAP filter (RFC 4515) once %%u is filled in: %v", tmpl, err)
		}
	}
	return parts, nil
}

// makeFilter fills in the filter template for user, every value escaped.
func makeFilter(parts []filterPart, user string) string {
	local, domain := user, ""
	if i := strings.LastIndexByte(user, '@'); i >= 0 {
		local, domain = user[:i], user[i+1:]
	}
	var b strings.Builder
	for _, p := range parts {
		switch p.ph {
		case 0:
			b.WriteString(p.text)
		case 'u':
			b.WriteString(ldap.EscapeFilter(user))
		case 'n':
			b.WriteString(ldap.EscapeFilter(local))
		case 'd':
			b.WriteString(ldap.EscapeFilter(domain))
		}
	}
	return b.String()
}

// Lookup implements [auth.Source] for `popgate route`: it searches for
// user's entry (the filter needs no password) and explains it by the
// rules of [auth.Directory]. No entry is found false.
func (s *Source) Lookup(ctx context.Context, user string) (backend, rule string, found bool, err error) {
	if err := (auth.Credentials{User: user}).Check(); err != nil {
		return "", "", false, fmt.Errorf("auth: %s: %w", s.name(), err)
	}
	e, err := s.find(ctx, user)
	if err != nil || e == nil {
		return "", "", false, err
	}
	backend, rule = s.cfg.Directory.Explain(e)
	return backend, rule, true, nil
}

// Decide implements [auth.Decider]: no entry is [auth.ErrNoRoute]; an
// entry is decided by [auth.Directory.Decide]; a directory that cannot be
// asked, or answers what cannot be used, is an error.
func (s *Source) Decide(ctx context.Context, req *auth.Request) (auth.Decision, error) {
	return s.cfg.Directory.Route(ctx, req, s.timeout, func(ctx context.Context) (*auth.Entry, error) {
		return s.find(ctx, req.User)
	})
}

// IgnoresDomain implements [auth.DomainBlind]: the filter compares the
// local part (%n) without the domain (%d) or the whole name (%u).
func (s *Source) IgnoresDomain() bool { return s.noDom }

// Route implements [auth.Router]: it is Decide.
func (s *Source) Route(ctx context.Context, req *auth.Request) (auth.Decision, error) {
	return s.Decide(ctx, req)
}

// PoolStats implements [auth.Pooled].
func (s *Source) PoolStats() auth.PoolStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return auth.PoolStats{InUse: s.inUse, Idle: len(s.idle)}
}

// Close closes the idle connections and keeps none open from then on.
// The Source still answers after Close (a session that began before a
// configuration reload logs in through the source it began with): each
// lookup then closes its connection when it is done.
func (s *Source) Close() error {
	s.mu.Lock()
	s.closed = true
	idle := s.idle
	s.idle = nil
	s.mu.Unlock()
	for _, c := range idle {
		c.close()
	}
	return nil
}

func (s *Source) name() string {
	if s.cfg.Directory.Source != "" {
		return s.cfg.Directory.Source
	}
	return "route.ldap"
}

// find searches for user's entry: nil when there is none.
func (s *Source) find(ctx context.Context, user string) (*auth.Entry, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	start := time.Now()
	e, err := s.search(ctx, makeFilter(s.filter, user))
	s.cfg.Observer.Report(s.name(), start, e != nil, err)
	if err != nil {
		return nil, fmt.Errorf("auth: %s: %s", s.name(), s.clean(err.Error()))
	}
	return e, nil
}

// search runs the search on a pooled connection; when that connection
// was reused and turns out dead, once more on a new one.
func (s *Source) search(ctx context.Context, filter string) (*auth.Entry, error) {
	for try := 0; ; try++ {
		c, err := s.get(ctx)
		if err != nil {
			return nil, err
		}
		e, err := s.searchOn(ctx, c, filter)
		broken := err != nil && !errors.Is(err, errAnswer)
		s.put(c, !broken)
		if err != nil && broken && c.reused && try == 0 && ctx.Err() == nil && isConnError(err) {
			continue
		}
		return e, err
	}
}

// errAnswer marks an answer that cannot be used, from a connection that is
// fine.
var errAnswer = errors.New("unusable answer")

// answerError is an unusable answer: errors.Is(err, errAnswer).
func answerError(format string, args ...any) error {
	return &answerErr{fmt.Sprintf(format, args...)}
}

type answerErr struct{ msg string }

func (e *answerErr) Error() string   { return e.msg }
func (e *answerErr) Is(t error) bool { return t == errAnswer }

// isConnError reports whether err may say that the connection was gone
// before the search was sent (the server closed it while it sat idle): an
// error that is neither the server's answer (an LDAP result code) nor a
// timeout, which a new connection would only wait out again.
func isConnError(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var le *ldap.Error
	if errors.As(err, &le) && le.ResultCode < ldap.ErrorNetwork {
		return false // the server answered
	}
	return true
}

// searchOn runs the search on c.
func (s *Source) searchOn(ctx context.Context, c *conn, filter string) (*auth.Entry, error) {
	limit := int(s.timeout / time.Second)
	req := &ldap.SearchRequest{
		BaseDN:       s.cfg.Base,
		Scope:        s.cfg.Scope,
		DerefAliases: ldap.NeverDerefAliases,
		// Two: enough to tell one entry from more than one.
		SizeLimit:        2,
		EnforceSizeLimit: true,
		TimeLimit:        max(limit, 1),
		Filter:           filter,
		Attributes:       s.attrs,
	}
	var res *ldap.SearchResult
	err := c.do(ctx, func() error {
		var err error
		res, err = c.ld.Search(req)
		return err
	})
	switch {
	case errors.Is(err, ldap.ErrSizeLimitExceeded) || ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded):
		return nil, answerError("more than one entry matches the filter %.300q; each user must match one entry", filter)
	case ldap.IsErrorWithCode(err, ldap.LDAPResultReferral):
		return nil, answerError("the directory answered with a referral, which popgate does not follow; " +
			"point url at the server that holds base")
	case ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject):
		return nil, answerError("base %.300q does not exist in the directory", s.cfg.Base)
	case err != nil:
		return nil, fmt.Errorf("search: %w", err)
	}
	switch len(res.Entries) {
	case 0:
		return nil, nil
	case 1:
	default:
		return nil, answerError("more than one entry matches the filter %.300q; each user must match one entry", filter)
	}
	return s.entry(res.Entries[0])
}

// entry makes an auth.Entry of what the directory returned.
func (s *Source) entry(le *ldap.Entry) (*auth.Entry, error) {
	where := fmt.Sprintf("entry %.300q", le.DN)
	get := func(name string) (string, error) {
		if name == "" {
			return "", nil
		}
		var vals []string
		for _, a := range le.Attributes {
			if strings.EqualFold(a.Name, name) {
				vals = append(vals, a.Values...)
			}
		}
		switch {
		case len(vals) == 0:
			return "", nil
		case len(vals) > 1:
			return "", answerError("%s: attribute %s has %d values, and one is expected", where, name, len(vals))
		case len(vals[0]) > auth.MaxCredentialLen:
			return "", answerError("%s: attribute %s is longer than %d bytes", where, name, auth.MaxCredentialLen)
		}
		return vals[0], nil
	}
	a := s.cfg.Attributes
	e := &auth.Entry{Where: where}
	var err error
	var pass, enabled string
	for _, f := range []struct {
		name string
		v    *string
	}{
		{a.Backend, &e.Backend}, {a.Host, &e.Host}, {a.Port, &e.Port}, {a.Login, &e.Login},
		{a.Password, &pass}, {a.PasswordHash, &e.PasswordHash}, {a.Enabled, &enabled},
	} {
		if *f.v, err = get(f.name); err != nil {
			return nil, err
		}
	}
	e.Password = auth.Password(pass)
	if e.Host != "" && e.Port == "" {
		e.Port = s.cfg.Port
	}
	switch strings.ToLower(enabled) {
	case "", "true", "yes", "1":
	case "false", "no", "0":
		e.Disabled = true
	default:
		return nil, answerError("%s: attribute %s is %.20q, neither TRUE nor FALSE", where, a.Enabled, enabled)
	}
	return e, nil
}

// clean makes an error's text fit for a log line: never the bind
// password, no control bytes, bounded.
func (s *Source) clean(msg string) string {
	if p := string(s.cfg.BindPassword); p != "" {
		msg = strings.ReplaceAll(msg, p, "***")
	}
	msg = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, msg)
	if len(msg) > 4*maxReason {
		msg = strings.ToValidUTF8(msg[:4*maxReason], "") + "..."
	}
	return msg
}

// get returns a connection from the pool, or a new one, waiting for a
// free place while Connections are in use.
func (s *Source) get(ctx context.Context) (*conn, error) {
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		// The timeout ran out before any of the connections was free:
		// searches take too long for their number at this rate of logins.
		return nil, fmt.Errorf("no free connection within the timeout (all %d of route.ldap.connections in use): "+
			"raise connections if the directory can take more, or look for slow searches (an index on the "+
			"filter's attribute): %w", cap(s.slots), ctx.Err())
	}
	now := time.Now()
	s.mu.Lock()
	s.inUse++
	for len(s.idle) > 0 {
		c := s.idle[len(s.idle)-1]
		s.idle = s.idle[:len(s.idle)-1]
		if c.ld.IsClosing() || now.Sub(c.since) > maxIdle {
			s.mu.Unlock()
			c.close()
			s.mu.Lock()
			continue
		}
		s.mu.Unlock()
		c.reused = true
		return c, nil
	}
	s.mu.Unlock()
	c, err := s.dial(ctx)
	if err != nil {
		s.mu.Lock()
		s.inUse--
		s.mu.Unlock()
		<-s.slots
		return nil, err
	}
	return c, nil
}

// put gives c back to the pool, or closes it when it is not healthy or
// the Source is closed.
func (s *Source) put(c *conn, healthy bool) {
	s.mu.Lock()
	s.inUse--
	keep := healthy && !s.closed && !c.ld.IsClosing()
	if keep {
		c.since = time.Now()
		s.idle = append(s.idle, c)
	}
	s.mu.Unlock()
	<-s.slots
	if !keep {
		c.close()
	}
}

// dial connects, encrypts (ldaps:// or StartTLS) and binds.
func (s *Source) dial(ctx context.Context) (*conn, error) {
	d := net.Dialer{KeepAlive: 30 * time.Second}
	raw, err := d.DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return nil, fmt.Errorf("connecting: %w", err)
	}
	c := &conn{raw: raw, budget: &budgetConn{Conn: raw}}
	c.budget.left.Store(maxAnswer)
	var nc net.Conn = c.budget
	if s.ldaps {
		tc := tls.Client(c.budget, s.cfg.TLSConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		nc = tc
	}
	c.ld = ldap.NewConn(nc, s.ldaps)
	c.ld.Start()
	err = c.do(ctx, func() error {
		if !s.ldaps && !s.cfg.Plaintext {
			if err := c.ld.StartTLS(s.cfg.TLSConfig); err != nil {
				return fmt.Errorf("StartTLS: %w", err)
			}
		}
		if s.cfg.BindDN == "" {
			return nil
		}
		_, err := c.ld.SimpleBind(&ldap.SimpleBindRequest{Username: s.cfg.BindDN, Password: string(s.cfg.BindPassword)})
		if err != nil {
			return fmt.Errorf("bind as %.300q: %w", s.cfg.BindDN, err)
		}
		return nil
	})
	if err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// conn is one connection to the directory.
type conn struct {
	ld     *ldap.Conn
	raw    net.Conn    // the TCP connection, for deadlines
	budget *budgetConn // raw, counting what is read
	since  time.Time   // when it went idle
	reused bool        // taken from the pool, not dialed for this lookup
}

// aLongTimeAgo is a deadline in the past: it ends a blocked read or write.
var aLongTimeAgo = time.Unix(1, 0)

// do runs f, an exchange on c, bounded by ctx: its deadline is the
// connection's, and its cancellation ends the exchange at once. Each
// exchange may read maxAnswer bytes.
func (c *conn) do(ctx context.Context, f func() error) error {
	c.budget.left.Store(maxAnswer)
	dl, _ := ctx.Deadline()
	if err := c.raw.SetDeadline(dl); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { c.raw.SetDeadline(aLongTimeAgo) })
	err := f()
	if !stop() {
		// ctx ended (the deadline may have struck first); the
		// connection's deadline is in the past, or about to be.
		c.ld.Close()
		if err == nil {
			err = ctx.Err()
		}
		return fmt.Errorf("%w (%w)", err, ctx.Err())
	}
	if err != nil {
		return err // the connection is closed, not reused
	}
	return c.raw.SetDeadline(time.Time{})
}

func (c *conn) close() {
	if c.ld != nil {
		c.ld.Close()
	}
	c.raw.Close()
}

// budgetConn is a connection that fails a read once more than its budget
// of bytes has been read: a directory that sends too much is cut off
// before it fills the memory.
type budgetConn struct {
	net.Conn
	left atomic.Int64
}

var errTooLarge = fmt.Errorf("the directory sent more than %d bytes for one search", maxAnswer)

func (b *budgetConn) Read(p []byte) (int, error) {
	n, err := b.Conn.Read(p)
	if b.left.Add(-int64(n)) < 0 {
		return n, errTooLarge
	}
	return n, err
}
