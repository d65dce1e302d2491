package main

import (
	"os"
	"strings"
	"testing"
)

// TestREADMESQLExample: the README's Postfixadmin query is the routing
// document's, which the interop tests run against PostgreSQL and MariaDB.
func TestREADMESQLExample(t *testing.T) {
	query := func(file string) string {
		t.Helper()
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		_, rest, ok := strings.Cut(string(b), "[route.sql]\ndriver = \"postgres\"\n")
		if !ok {
			t.Fatalf("%s has no [route.sql] example for postgres", file)
		}
		_, rest, ok = strings.Cut(rest, `query = """`)
		q, _, ok2 := strings.Cut(rest, `"""`)
		if !ok || !ok2 {
			t.Fatalf("%s: no query in the [route.sql] example", file)
		}
		return q
	}
	readme, doc := query("../../README.md"), query("../../docs/routing.md")
	if readme != doc {
		t.Errorf("README's query differs from docs/routing.md's:\nREADME:%s\ndocs:%s", readme, doc)
	}
	if !strings.Contains(readme, "m.password AS password_hash") {
		t.Errorf("the example query lost its password_hash column:%s", readme)
	}
}
