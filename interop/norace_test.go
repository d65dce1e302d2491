//go:build !race

package interop

// raceEnabled says the tests run with -race; see race_test.go.
const raceEnabled = false
