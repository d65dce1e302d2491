package main

import (
	"os"
	"testing"
)

// TestExampleConfig: config.example.toml, which documents every key, is a
// valid configuration (certificate files aside, which check would open).
func TestExampleConfig(t *testing.T) {
	data, err := os.ReadFile("../../config.example.toml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseConfig("config.example.toml", data); err != nil {
		t.Fatalf("config.example.toml: %v", err)
	}
}
