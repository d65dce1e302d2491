package auth

import (
	"context"
	"strconv"
	"strings"
)

// Static routes from fixed tables: the exact user name first, then the
// domain (the part after the last "@"), then Default. Keys are compared
// case-insensitively (ASCII): mail systems treat "Alice@Example.COM" and
// "alice@example.com" as one mailbox, and a table that told them apart would
// route the same person two ways. As a [Source] a Static leaves Default
// out: a [Chain] has a default of its own, after every source. A Static
// must not be changed after first use; build a new one instead.
type Static struct {
	Users   map[string]string // user name → backend name
	Domains map[string]string // domain → backend name
	Default string            // backend for everyone else; "" refuses them with ErrNoRoute
}

// UserKey returns the key a route table holds user for: route tables
// compare user names case-insensitively.
func UserKey(user string) string { return strings.ToLower(user) }

// DomainKey returns the key a route table holds domain for: domains are
// compared case-insensitively, and a route.domains key or a map file line
// may write the domain with a leading "@".
func DomainKey(domain string) string { return strings.ToLower(strings.TrimPrefix(domain, "@")) }

// userDomain returns the domain part of a user name as a route table
// looks it up: the part after the last "@".
func userDomain(user string) (string, bool) {
	i := strings.LastIndexByte(user, '@')
	if i < 0 {
		return "", false
	}
	return DomainKey(user[i+1:]), true
}

// NewStatic returns a Static with its keys folded by [UserKey] and
// [DomainKey].
func NewStatic(users, domains map[string]string, def string) *Static {
	s := &Static{Users: make(map[string]string, len(users)), Domains: make(map[string]string, len(domains)), Default: def}
	for k, v := range users {
		s.Users[UserKey(k)] = v
	}
	for k, v := range domains {
		s.Domains[DomainKey(k)] = v
	}
	return s
}

// Lookup implements [Source]: it looks user up in Users, then in Domains,
// leaving Default out (a [Chain] asks other sources before the default).
// The rule is named by its configuration key, such as
// `route.users "alice@example.com"` or `route.domains "example.com"`.
func (s *Static) Lookup(_ context.Context, user string) (backend, rule string, found bool, err error) {
	b, kind, ok := s.match(user)
	if !ok {
		return "", "", false, nil
	}
	key := UserKey(user)
	if kind == matchDomain {
		key, _ = userDomain(user)
	}
	return b, kind + " " + strconv.Quote(key), true, nil
}

// HasDomain implements [DomainSource].
func (s *Static) HasDomain(domain string) bool {
	if s == nil {
		return false
	}
	_, ok := s.Domains[DomainKey(strings.TrimSuffix(domain, "."))]
	return ok
}

// Close implements [Source]; a Static holds nothing open.
func (s *Static) Close() error { return nil }

const (
	matchUser   = "route.users"
	matchDomain = "route.domains"
)

func (s *Static) match(user string) (backend, kind string, ok bool) {
	if s == nil {
		return "", "", false
	}
	if b, ok := s.Users[UserKey(user)]; ok {
		return b, matchUser, true
	}
	if d, ok := userDomain(user); ok {
		if b, ok := s.Domains[d]; ok {
			return b, matchDomain, true
		}
	}
	return "", "", false
}

// Route implements [Router]. The backend login uses the client's own
// credentials.
func (s *Static) Route(_ context.Context, req *Request) (Decision, error) {
	b, _, ok := s.match(req.User)
	if !ok {
		b = s.Default
	}
	if b == "" {
		return Decision{}, ErrNoRoute
	}
	return Decision{Backend: b, User: req.User, Password: req.Password}, nil
}
