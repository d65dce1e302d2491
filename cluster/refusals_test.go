package cluster

import (
	"strconv"
	"testing"
)

// A set of refusals logs each id once, stays within its bound whatever
// the ids, and once full forgets rather than logging every id again at
// every read.
func TestRefusalsFirst(t *testing.T) {
	r := refusals{}
	if !r.first("a", 3) || r.first("a", 3) {
		t.Fatal("an id is not first exactly once")
	}
	for i := range 100 {
		id := strconv.Itoa(i)
		if !r.first(id, 3) {
			t.Fatalf("the new id %s is not first", id)
		}
		if r.first(id, 3) {
			t.Fatalf("the id %s is first twice in a row", id)
		}
		if len(r) > 3 {
			t.Fatalf("%d ids remembered, want at most 3", len(r))
		}
	}
}
