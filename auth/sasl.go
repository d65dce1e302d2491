package auth

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
)

// Errors from the SASL decoders. None of them quotes the payload.
var (
	ErrBadBase64 = errors.New("auth: invalid base64")
	ErrBadPlain  = errors.New("auth: malformed SASL PLAIN response")
)

// MaxSASLLen bounds one base64 SASL response line (RFC 5034 §4 lets
// continuation lines exceed the 255-octet command limit; OAuth tokens are
// about 2 KB).
const MaxSASLLen = 8192

// DecodeBase64 decodes a SASL response. It accepts standard base64 with or
// without "=" padding (some clients strip it; see wildduck#436) and refuses
// anything else, including whitespace inside the data.
func DecodeBase64(s string) ([]byte, error) {
	if len(s) > MaxSASLLen {
		return nil, ErrBadBase64
	}
	s = strings.TrimRight(s, "=")
	b, err := base64.RawStdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, ErrBadBase64
	}
	return b, nil
}

// ParsePlain splits a decoded SASL PLAIN message (RFC 4616 §2):
// [authzid] NUL authcid NUL passwd.
func ParsePlain(msg []byte) (Credentials, error) {
	authz, rest, ok := bytes.Cut(msg, []byte{0})
	if !ok {
		return Credentials{}, ErrBadPlain
	}
	user, pass, ok := bytes.Cut(rest, []byte{0})
	if !ok || len(user) == 0 || bytes.IndexByte(pass, 0) >= 0 {
		return Credentials{}, ErrBadPlain
	}
	return Credentials{User: string(user), Password: Password(pass), AuthzID: string(authz), Method: "PLAIN"}, nil
}

// EncodePlain builds the base64 SASL PLAIN initial response for a backend
// login (no authorization identity).
func EncodePlain(user string, pass Password) string {
	return EncodePlainAs("", user, pass)
}

// EncodePlainAs builds a SASL PLAIN initial response with an authorization
// identity: user logs in to act as authzid.
func EncodePlainAs(authzid, user string, pass Password) string {
	b := make([]byte, 0, len(authzid)+len(user)+len(pass)+2)
	b = append(b, authzid...)
	b = append(b, 0)
	b = append(b, user...)
	b = append(b, 0)
	b = append(b, pass...)
	return base64.StdEncoding.EncodeToString(b)
}
