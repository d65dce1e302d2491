package proxy

import (
	"testing"
	"time"
)

func TestFailureTimes(t *testing.T) {
	const seed = 2 * time.Second
	var f failureTimes
	if d := f.floor(seed); d != seed {
		t.Fatalf("floor() with nothing recorded = %v, want the seed %v", d, seed)
	}
	// A fast backend: the seed stays until failureSamples refusals.
	for range failureSamples - 1 {
		f.add("fast", time.Millisecond, seed)
	}
	if d := f.floor(seed); d != seed {
		t.Fatalf("floor() = %v before the seed left, want %v", d, seed)
	}
	f.add("fast", time.Millisecond, seed)
	if d := f.floor(seed); d != time.Millisecond {
		t.Fatalf("floor() = %v once only fast refusals are held, want 1ms", d)
	}
	// A slow backend raises the floor for all, and many fast refusals
	// do not lower it again: only the slow backend's own do.
	f.add("slow", 3*time.Second, seed)
	for range 10 * failureSamples {
		f.add("fast", time.Millisecond, seed)
	}
	if d := f.floor(seed); d != 3*time.Second {
		t.Fatalf("floor() = %v, want the slow backend's 3s", d)
	}
	for range failureSamples {
		f.add("slow", 100*time.Millisecond, seed)
	}
	if d := f.floor(seed); d != 100*time.Millisecond {
		t.Fatalf("floor() = %v, want 100ms", d)
	}
}
