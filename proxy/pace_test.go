package proxy

import (
	"testing"
	"time"
)

func TestFailureTimes(t *testing.T) {
	var f failureTimes
	if d := f.sample(); d != 0 {
		t.Fatalf("sample() with nothing recorded = %v, want 0", d)
	}
	// Only the last failureSamples durations are kept.
	for i := range failureSamples + 10 {
		f.add(time.Duration(i) * time.Millisecond)
	}
	for range 1000 {
		d := f.sample()
		if d < 10*time.Millisecond || d >= time.Duration(failureSamples+10)*time.Millisecond {
			t.Fatalf("sample() = %v, outside the last %d recorded", d, failureSamples)
		}
	}
}
