//go:build race

package interop

// raceEnabled says the tests run with -race; popgate is then built with
// -race too, and a data race it reports fails the test that ran it.
const raceEnabled = true
