package auth

import (
	"context"
	"errors"
	"strconv"
)

// Chain routes in the order of popgate's configuration (DESIGN.md): the
// exact user in Static.Users, the user's domain in Static.Domains, the map
// file (user, then domain), the HTTP service, then Default. Nil fields are
// skipped. Static.Default is not used: the default comes last, after the map
// file and the HTTP service, and is Chain.Default.
//
// The HTTP service's answer is final: a refusal is not routed to Default,
// and a failing service is an error (the client gets "-ERR [SYS/TEMP]"),
// not a fall-through. Only [ErrNoRoute] from it moves on to Default; an
// auth_http service never says that, so with HTTP set Default is in practice
// unused. A Chain must not be changed after first use.
type Chain struct {
	Static  *Static  // users and domains from the configuration; may be nil
	Map     *MapFile // route.map_file; may be nil
	HTTP    Router   // route.http, usually a *Cache around an *HTTP; may be nil
	Default string   // route.default; "" refuses the rest with ErrNoRoute
}

// Route implements [Router].
func (c *Chain) Route(ctx context.Context, req *Request) (Decision, error) {
	if b, _, ok := c.Static.match(req.User); ok {
		return Decision{Backend: b, User: req.User, Password: req.Password}, nil
	}
	if r, _, _, ok := c.Map.lookup(req.User); ok {
		return Decision{Backend: r.backend, User: req.User, Password: req.Password}, nil
	}
	if c.HTTP != nil {
		d, err := c.HTTP.Route(ctx, req)
		if !errors.Is(err, ErrNoRoute) {
			return d, err
		}
	}
	if c.Default != "" {
		return Decision{Backend: c.Default, User: req.User, Password: req.Password}, nil
	}
	return Decision{}, ErrNoRoute
}

// Explain says where user would go and why, for `popgate route`, without
// asking the HTTP service or any backend.
func (c *Chain) Explain(user string) string {
	if b, rule, ok := c.Static.Match(user); ok {
		return "backend " + strconv.Quote(b) + " (" + rule + ")"
	}
	if b, rule, ok := c.Map.Lookup(user); ok {
		return "backend " + strconv.Quote(b) + " (map file " + rule + ")"
	}
	if c.HTTP != nil {
		s := "no static or map file rule; would ask the HTTP service, which decides (and checks the password)"
		if c.Default != "" {
			s += "; should it have no route, backend " + strconv.Quote(c.Default) + " (route.default)"
		}
		return s
	}
	if c.Default != "" {
		return "backend " + strconv.Quote(c.Default) + " (route.default)"
	}
	return "no route: the login is refused"
}
