package tlsconf

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/acme"
)

// Challenges are a Server's ACME challenge answerers (HTTP-01 and
// TLS-ALPN-01), bound by [Server.ListenChallenges] and run by
// [Challenges.Serve].
type Challenges struct {
	a       *acmeState
	log     *slog.Logger
	gate    *connGate    // admits the connections of both answerers
	httpLn  net.Listener // nil: no HTTP-01 answerer
	alpnLn  net.Listener // nil: no TLS-ALPN-01 answerer
	httpSrv *http.Server
	// challengeCert returns the TLS-ALPN-01 challenge certificate for a
	// validation hello: autocert's GetCertificate, replaced by tests.
	challengeCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// helloTimeout is challengeHelloTimeout, shortened by tests.
	helloTimeout time.Duration
}

// ListenChallenges binds the challenge answerers ACMEConfig asks for, which
// hold at most the connections lim allows. It returns nil, nil when the
// server has no ACME. The caller must call Serve, or Close.
func (s *Server) ListenChallenges(lim ChallengeLimits) (*Challenges, error) {
	if s.acme == nil {
		return nil, nil
	}
	c := &Challenges{a: s.acme, log: s.log, gate: newConnGate(lim, s.log),
		challengeCert: s.acme.m.GetCertificate, helloTimeout: challengeHelloTimeout}
	cfg := s.cfg.ACME
	if cfg.HTTPChallenge != "" {
		ln, err := lim.listen(cfg.HTTPChallenge)
		if err != nil {
			return nil, fmt.Errorf("tlsconf: acme http_challenge: %w", err)
		}
		c.httpLn = &gateListener{Listener: ln, g: c.gate}
		c.httpSrv = &http.Server{
			Handler: challengeHandler(s.acme.m.HTTPHandler(http.NotFoundHandler()), s.acme.inPolicy, s.log),
			// A CA sends one request per connection, right after
			// connecting; keep-alives are off.
			ReadHeaderTimeout: challengeHelloTimeout,
			ReadTimeout:       challengeAnswerTimeout,
			WriteTimeout:      challengeAnswerTimeout,
			MaxHeaderBytes:    4 << 10,
			// The handler marks the gate's connection busy.
			ConnContext: func(ctx context.Context, nc net.Conn) context.Context {
				return context.WithValue(ctx, connKey{}, nc)
			},
			ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		}
		c.httpSrv.SetKeepAlivesEnabled(false)
	}
	if cfg.TLSALPNChallenge != "" {
		ln, err := lim.listen(cfg.TLSALPNChallenge)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("tlsconf: acme tls_alpn_challenge: %w", err)
		}
		c.alpnLn = &gateListener{Listener: ln, g: c.gate}
	}
	return c, nil
}

// challengePath is where the CA fetches an HTTP-01 key authorization
// (RFC 8555 §8.3).
const challengePath = "/.well-known/acme-challenge/"

// maxTokenLen bounds an HTTP-01 token. RFC 8555 §8.1 asks for at least 128
// bits of entropy, base64url-encoded: Let's Encrypt's are 43 characters.
const maxTokenLen = 128

// connKey is the request context key of the connection a challenge
// request came on.
type connKey struct{}

// challengeHandler serves HTTP-01 through h (autocert's handler): a GET or
// HEAD of challengePath plus a token (base64url, at most maxTokenLen
// characters) for a host inPolicy allows gets h's answer when it is a
// 200. Only such a request marks its connection busy for the gate.
// A request with a body, which no CA sends, is not answered: its
// connection is closed at once, without reading the body (net/http would
// otherwise wait for the body, up to ReadTimeout, to discard it).
// Everything else gets a bare 404, without a body: h's error texts name
// the cache directory by its absolute path (a token with a NUL, or one too
// long for a file name) and the host policy.
func challengeHandler(h http.Handler, inPolicy func(string) bool, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
			closeUnread(w, r, log)
			return
		}
		token, ok := strings.CutPrefix(r.URL.Path, challengePath)
		if !ok || !validToken(token) || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
			bareNotFound(w)
			return
		}
		// The CA asks for http://NAME/ on port 80; behind a port mapping
		// (and in tests) the Host header carries a port, which
		// autocert's host policy would refuse.
		if host, _, err := net.SplitHostPort(r.Host); err == nil {
			r = r.Clone(r.Context())
			r.Host = host
		}
		if !inPolicy(r.Host) {
			log.Debug("acme http-01 request not answered", "host", r.Host, "status", http.StatusNotFound)
			bareNotFound(w)
			return
		}
		if gc, ok := r.Context().Value(connKey{}).(*gatedConn); ok {
			gc.busy()
		}
		rec := &recordedResponse{header: make(http.Header)}
		h.ServeHTTP(rec, r)
		if rec.status != http.StatusOK || rec.overflow {
			log.Debug("acme http-01 request not answered", "host", r.Host, "status", rec.status)
			bareNotFound(w)
			return
		}
		if ct := rec.header.Get("Content-Type"); ct != "" {
			w.Header().Set("Content-Type", ct)
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(rec.body)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(rec.body)
	})
}

// validToken reports whether t can be an ACME token: 1 to maxTokenLen
// base64url characters.
func validToken(t string) bool {
	if t == "" || len(t) > maxTokenLen {
		return false
	}
	for i := 0; i < len(t); i++ {
		switch c := t[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// closeUnread closes the connection of r without reading its body or
// answering.
func closeUnread(w http.ResponseWriter, r *http.Request, log *slog.Logger) {
	log.Debug("acme http-01 request with a body: connection closed", "host", r.Host, "method", r.Method)
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// Not an HTTP/1 connection (never here): answer and close.
		w.Header().Set("Connection", "close")
		bareNotFound(w)
		return
	}
	conn.Close()
}

// bareNotFound answers 404 with no body.
func bareNotFound(w http.ResponseWriter) {
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusNotFound)
}

// maxChallengeResponse bounds what recordedResponse keeps: a key
// authorization is a token, a dot and a 43-character thumbprint.
const maxChallengeResponse = 1 << 10

// recordedResponse keeps what a handler answers, so that only a success
// reaches the client.
type recordedResponse struct {
	header   http.Header
	status   int
	body     []byte
	overflow bool // the handler wrote more than maxChallengeResponse
}

func (r *recordedResponse) Header() http.Header { return r.header }

func (r *recordedResponse) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}

func (r *recordedResponse) Write(p []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	if len(r.body)+len(p) > maxChallengeResponse {
		r.overflow = true
		return len(p), nil
	}
	r.body = append(r.body, p...)
	return len(p), nil
}

// HTTPAddr is the HTTP-01 answerer's address, "" without one.
func (c *Challenges) HTTPAddr() string { return addrOf(c.httpLn) }

// TLSALPNAddr is the TLS-ALPN-01 answerer's address, "" without one.
func (c *Challenges) TLSALPNAddr() string { return addrOf(c.alpnLn) }

func addrOf(ln net.Listener) string {
	if ln == nil {
		return ""
	}
	return ln.Addr().String()
}

// Close closes the answerers' listeners.
func (c *Challenges) Close() {
	if c.httpLn != nil {
		c.httpLn.Close()
	}
	if c.alpnLn != nil {
		c.alpnLn.Close()
	}
}

// Serve answers challenges until ctx is done, then closes the listeners.
// Once the answerers run it obtains (or loads from the cache) the
// certificate of every ACME domain in the background, so that the first
// client does not wait for an order; that goroutine ends by itself
// (autocert bounds an order to 5 minutes) and is not waited for.
func (c *Challenges) Serve(ctx context.Context) {
	var wg sync.WaitGroup
	if c.httpSrv != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.httpSrv.Serve(c.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				c.log.Error("acme http-01 answerer failed", "err", err)
			}
		}()
	}
	if c.alpnLn != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.serveTLSALPN(ctx)
		}()
	}
	go c.a.prefetch(ctx)
	<-ctx.Done()
	if c.httpSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = c.httpSrv.Shutdown(sctx)
		cancel()
	}
	c.Close()
	wg.Wait()
}

// serveTLSALPN answers TLS-ALPN-01 (RFC 8737): a handshake offering only
// "acme-tls/1" gets the challenge certificate, anything else is refused;
// the connection is closed after the handshake. The gate bounds the
// connections; each has challengeHelloTimeout for its ClientHello, then
// challengeAnswerTimeout for the rest of the handshake.
func (c *Challenges) serveTLSALPN(ctx context.Context) {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{acme.ALPNProto},
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			if !wantsChallenge(hello) {
				return nil, errors.New("tlsconf: this address answers ACME TLS-ALPN-01 challenges only")
			}
			if !c.a.inPolicy(hello.ServerName) {
				return nil, fmt.Errorf("tlsconf: acme: host %q is not in tls.acme.domains or the on-demand policy", hello.ServerName)
			}
			// A validation's ClientHello is in: the connection is
			// busy now, and no newcomer displaces it for a while.
			if gc, ok := hello.Conn.(*gatedConn); ok {
				gc.busy()
			}
			_ = hello.Conn.SetDeadline(time.Now().Add(challengeAnswerTimeout))
			return nil, nil
		},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.challengeCert(hello)
		},
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	var delay time.Duration
	for {
		conn, err := c.alpnLn.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			c.log.Warn("acme tls-alpn-01 answerer: accept failed; retrying", "err", err, "delay", delay)
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return
			}
			continue
		}
		delay = 0
		_ = conn.SetDeadline(time.Now().Add(c.helloTimeout))
		wg.Go(func() { answerTLSALPN(conn, cfg, c.log) })
	}
}

func answerTLSALPN(conn net.Conn, cfg *tls.Config, log *slog.Logger) {
	defer conn.Close()
	tc := tls.Server(conn, cfg)
	if err := tc.Handshake(); err != nil {
		log.Debug("acme tls-alpn-01 handshake failed", "remote", conn.RemoteAddr().String(), "err", err)
		return
	}
	log.Debug("acme tls-alpn-01 challenge answered", "remote", conn.RemoteAddr().String(), "sni", tc.ConnectionState().ServerName)
}
