package auth

import (
	"bytes"
	"errors"
	"strings"
)

// The SASL mechanisms that carry an OAuth 2.0 bearer token instead of a
// password: OAUTHBEARER (RFC 7628) and Google's XOAUTH2, which mail
// clients (Thunderbird, Outlook, curl, getmail6) send alike.
const (
	MethodOAuthBearer = "OAUTHBEARER"
	MethodXOAuth2     = "XOAUTH2"
)

// IsTokenMethod reports whether a login of method carries a bearer token in
// [Credentials.Password] rather than a password.
func IsTokenMethod(method string) bool {
	return method == MethodOAuthBearer || method == MethodXOAuth2
}

// ErrBadBearer is returned by [ParseOAuthBearer] and [ParseXOAuth2] for a
// message that does not follow the mechanism's grammar. It never quotes the
// message, which holds the token.
var ErrBadBearer = errors.New("auth: malformed SASL bearer token message")

// ParseOAuthBearer decodes an OAUTHBEARER client response (RFC 7628 §3.1):
//
//	gs2-header kvsep *(key "=" value kvsep) kvsep
//	gs2-header = "n,"  [ "a=" saslname ] ","
//
// with kvsep "\x01". The authorization identity ("a=", with RFC 5801's
// "=2C" and "=3D" escapes) becomes the user, "" when the client named
// none; the "auth" value must be "Bearer " and a token. Channel binding
// ("p=") is refused: nothing here can bind one, and "y" (the client could
// bind but thinks the server cannot) is accepted as RFC 5801 allows. The
// other keys (host, port) are checked for form only.
func ParseOAuthBearer(msg []byte) (Credentials, error) {
	gs2, rest, ok := bytes.Cut(msg, []byte{1})
	if !ok {
		return Credentials{}, ErrBadBearer
	}
	// gs2 is "n,a=user," or "n,,"; "y" in place of "n" too.
	flag, afterFlag, ok := bytes.Cut(gs2, []byte{','})
	if !ok || (string(flag) != "n" && string(flag) != "y") {
		return Credentials{}, ErrBadBearer
	}
	authz, tail, ok := bytes.Cut(afterFlag, []byte{','})
	if !ok || len(tail) != 0 {
		return Credentials{}, ErrBadBearer
	}
	var user string
	if len(authz) > 0 {
		name, ok := bytes.CutPrefix(authz, []byte("a="))
		if !ok || len(name) == 0 {
			return Credentials{}, ErrBadBearer
		}
		u, err := unescapeSASLName(name)
		if err != nil {
			return Credentials{}, err
		}
		user = u
	}
	token, err := bearerPairs(rest, nil)
	if err != nil {
		return Credentials{}, err
	}
	return Credentials{User: user, Password: Password(token), Method: MethodOAuthBearer}, nil
}

// ParseXOAuth2 decodes an XOAUTH2 client response (Google's "OAuth 2.0
// Mechanism"): "user=" name "\x01auth=Bearer " token "\x01\x01".
func ParseXOAuth2(msg []byte) (Credentials, error) {
	var user []byte
	token, err := bearerPairs(msg, &user)
	if err != nil {
		return Credentials{}, err
	}
	if len(user) == 0 {
		return Credentials{}, ErrBadBearer
	}
	return Credentials{User: string(user), Password: Password(token), Method: MethodXOAuth2}, nil
}

// bearerPairs parses key=value pairs each ended by "\x01", then a final
// "\x01", and returns the bearer token of the "auth" pair. With user not
// nil, a "user" pair is required and stored there (XOAUTH2); else a "user"
// key is just another key. Keys are RFC 7628's 1*(ALPHA), each at most
// once; values hold no control characters but tab, CR and LF are refused
// too, since none has a place in any key popgate reads.
func bearerPairs(b []byte, user *[]byte) (string, error) {
	var token string
	seen := map[string]bool{}
	for {
		if len(b) == 0 {
			return "", ErrBadBearer // the final kvsep is missing
		}
		if b[0] == 1 {
			if len(b) != 1 || token == "" {
				return "", ErrBadBearer
			}
			return token, nil
		}
		pair, rest, ok := bytes.Cut(b, []byte{1})
		if !ok {
			return "", ErrBadBearer
		}
		b = rest
		key, value, ok := bytes.Cut(pair, []byte{'='})
		if !ok || len(key) == 0 || seen[string(key)] {
			return "", ErrBadBearer
		}
		seen[string(key)] = true
		for _, c := range key {
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
				return "", ErrBadBearer
			}
		}
		for _, c := range value {
			if c < 0x20 || c == 0x7f {
				return "", ErrBadBearer
			}
		}
		switch {
		case string(key) == "auth":
			t, err := bearerToken(value)
			if err != nil {
				return "", err
			}
			token = t
		case user != nil && string(key) == "user":
			*user = value
		}
	}
}

// bearerToken returns the token of an "auth" value: "Bearer" (any case),
// one space and an RFC 6750 b64token.
func bearerToken(v []byte) (string, error) {
	scheme, tok, ok := bytes.Cut(v, []byte{' '})
	if !ok || !strings.EqualFold(string(scheme), "Bearer") || len(tok) == 0 || len(tok) > MaxSASLLen {
		return "", ErrBadBearer
	}
	i := 0
	for i < len(tok) && isB64TokenChar(tok[i]) {
		i++
	}
	for i < len(tok) && tok[i] == '=' {
		i++
	}
	if i == 0 || i != len(tok) {
		return "", ErrBadBearer
	}
	return string(tok), nil
}

func isB64TokenChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/'
}

// unescapeSASLName undoes RFC 5801's saslname escapes: "=2C" is ",", "=3D"
// is "="; any other "=" is malformed.
func unescapeSASLName(b []byte) (string, error) {
	for _, c := range b {
		if c < 0x20 || c == 0x7f {
			return "", ErrBadBearer
		}
	}
	if bytes.IndexByte(b, '=') < 0 {
		return string(b), nil
	}
	var sb strings.Builder
	for i := 0; i < len(b); i++ {
		if b[i] != '=' {
			sb.WriteByte(b[i])
			continue
		}
		if i+2 >= len(b) {
			return "", ErrBadBearer
		}
		switch string(b[i+1 : i+3]) {
		case "2C", "2c":
			sb.WriteByte(',')
		case "3D", "3d":
			sb.WriteByte('=')
		default:
			return "", ErrBadBearer
		}
		i += 2
	}
	return sb.String(), nil
}

// OAuthErrorChallenge is the JSON of RFC 7628 §3.2.2's server error
// response, to be sent base64-encoded as a continuation after a refused
// token; the client answers with "\x01" (base64 "AQ==") and the server then
// fails the exchange. configURL, when not "", points the client at the
// issuer's discovery document ("openid-configuration"); scope names the
// scope the client should ask for ("" leaves it out).
func OAuthErrorChallenge(configURL, scope string) []byte {
	var b bytes.Buffer
	b.WriteString(`{"status":"invalid_token"`)
	if scope != "" {
		b.WriteString(`,"scope":`)
		writeJSONString(&b, scope)
	}
	if configURL != "" {
		b.WriteString(`,"openid-configuration":`)
		writeJSONString(&b, configURL)
	}
	b.WriteString("}")
	return b.Bytes()
}

func writeJSONString(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20:
			b.WriteString(`\u00`)
			b.WriteByte("0123456789abcdef"[r>>4])
			b.WriteByte("0123456789abcdef"[r&15])
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
}
