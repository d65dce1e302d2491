package admin

import "time"

// ListenerInfo describes a served listener for the console.
type ListenerInfo struct {
	Name, Address string
	TLS           string // "implicit", "starttls", "none"
}

// BackendInfo describes a configured backend for the console.
type BackendInfo struct {
	Name string
	// Addresses are its address and fallbacks, in the order tried.
	Addresses []string
	TLS       string
}

// AddressHealth is the active health check's view of one backend address.
type AddressHealth struct {
	Address   string
	Up        bool
	LastCheck time.Time
	Latency   time.Duration
	Err       string // the last failed check's error; "" when up
}

// CertificateInfo describes a served certificate for the console.
type CertificateInfo struct {
	Names    []string
	Issuer   string
	NotAfter time.Time
	// Source is "file", "acme" or "self-signed".
	Source string
	// LastRenewal is the last ACME renewal attempt's time, zero if none
	// is known; RenewalErr its error, "" if it succeeded.
	LastRenewal time.Time
	RenewalErr  string
}

// RouteAnswer is where a user's logins go, as `popgate route` says it.
type RouteAnswer struct {
	// Backend is "" when the user has no route (the login is refused).
	Backend string
	// Address and TLS are the backend's, when there is one.
	Address, TLS string
	Why          string
}

func (c *sourceCollector) get() Sources {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.src
}
