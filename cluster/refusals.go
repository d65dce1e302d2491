package cluster

// refusals remembers the entries read from Redis that were refused and
// logged, so that each is logged once rather than at every read. It
// forgets them all when it holds max: what a broken or hostile Redis
// hands back cannot make it grow, and at worst a line is logged again.
// Its owner's mutex guards it.
type refusals map[string]bool

// first reports whether id is not yet remembered, and remembers it.
func (r refusals) first(id string, max int) bool {
	if r[id] {
		return false
	}
	if len(r) >= max {
		clear(r)
	}
	r[id] = true
	return true
}
