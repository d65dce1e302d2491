// Package promtext reads Prometheus' text exposition format into a map, for
// tests and the benchmark that check popgate's /metrics.
package promtext

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Parse returns every sample of r keyed by its series as exposed,
// `name{label="value",...}` with the labels in the exposition's order
// (client_golang sorts them by name), or just `name`. Comments and blank
// lines are skipped; a line that is not "series value" is an error.
func Parse(r io.Reader) (map[string]float64, error) {
	m := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			return nil, fmt.Errorf("promtext: no value in %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("promtext: %q: %w", line, err)
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}
