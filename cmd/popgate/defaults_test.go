package main

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

// TestConfigKeysComplete: configKeys lists every key Config decodes, and
// nothing else.
func TestConfigKeysComplete(t *testing.T) {
	decoded := map[string]bool{}
	var walk func(prefix string, ty reflect.Type)
	walk = func(prefix string, ty reflect.Type) {
		for f := range ty.Fields() {
			tag, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if tag == "" || tag == "-" {
				continue
			}
			key, ft := prefix+tag, f.Type
			for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			// Sections and arrays of sections hold keys; a Duration is a
			// value, and so is tls.certificates, an array of inline
			// tables listed as one key.
			if ft.Kind() == reflect.Struct && ft != reflect.TypeFor[Duration]() && key != "tls.certificates" {
				walk(key+".", ft)
				continue
			}
			decoded[key] = true
		}
	}
	walk("", reflect.TypeFor[Config]())
	listed := map[string]bool{}
	for _, k := range configKeys {
		if listed[k.Key] {
			t.Errorf("configKeys lists %s twice", k.Key)
		}
		listed[k.Key] = true
		if !decoded[k.Key] {
			t.Errorf("configKeys lists %s, which Config does not decode", k.Key)
		}
		switch k.Default.(type) {
		case nil, string, int, bool, time.Duration, []string:
		default:
			t.Errorf("configKeys: %s has a default of type %T; use string, int, bool, time.Duration or []string", k.Key, k.Default)
		}
	}
	for k := range decoded {
		if !listed[k] {
			t.Errorf("Config decodes %s, which configKeys does not list (with its default, or nil)", k)
		}
	}
}

// TestConfigKeysDocumented: config.example.toml shows every key, those
// with a default set to it; README.md and docs/*.md name every key, and
// where they state a default in parentheses ("`max_connections` (10000)",
// "`renew_before` (default 30 days)") it is the default of configKeys.
func TestConfigKeysDocumented(t *testing.T) {
	t.Run("config.example.toml", func(t *testing.T) {
		data, err := os.ReadFile("../../config.example.toml")
		if err != nil {
			t.Fatal(err)
		}
		shown := exampleKeys(string(data))
		for _, k := range configKeys {
			lines := shown[k.Key]
			if len(lines) == 0 {
				t.Errorf("config.example.toml does not show %s", k.Key)
				continue
			}
			if k.Default == nil {
				continue
			}
			for _, l := range lines {
				if !l.read {
					t.Errorf("config.example.toml:%d: %s: the value cannot be read to compare it with the default %s", l.n, k.Key, render(k.Default))
				} else if !sameValue(k.Default, l.value) {
					t.Errorf("config.example.toml:%d: %s = %s, but its default is %s (defaults.go)", l.n, k.Key, render(l.value), render(k.Default))
				}
			}
		}
		for key, lines := range shown {
			if !slices.ContainsFunc(configKeys, func(k configKey) bool { return k.Key == key }) {
				t.Errorf("config.example.toml:%d: %s is no key of the configuration", lines[0].n, key)
			}
		}
	})

	t.Run("README.md and docs", func(t *testing.T) {
		files, err := filepath.Glob("../../docs/*.md")
		if err != nil {
			t.Fatal(err)
		}
		files = append([]string{"../../README.md"}, files...)
		var all strings.Builder
		stated := map[string][]statedDefault{}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			all.Write(data)
			name := strings.TrimPrefix(f, "../../")
			for key, ds := range statedDefaults(name, string(data)) {
				stated[key] = append(stated[key], ds...)
			}
		}
		text := all.String()
		for _, k := range configKeys {
			// `key`, `key = value`, or a line of a TOML example.
			_, leaf := splitKey(k.Key)
			names := regexp.QuoteMeta(k.Key) + "|" + regexp.QuoteMeta(leaf)
			if !regexp.MustCompile("(?m)`(" + names + ")[` ]|^\\s*#?\\s*(" + names + ")\\s*=").MatchString(text) {
				t.Errorf("README.md and docs/*.md do not name %s (as `%s` or `%s`)", k.Key, leaf, k.Key)
			}
			for _, d := range stated[k.Key] {
				switch {
				case k.Default == nil:
					// Its default is no single value ("a fifth of
					// order_budget"), or none: nothing to compare.
				case !d.read(k.Default):
					if d.explicit {
						t.Errorf("%s: `%s` (%s): no value of its type, and its default is %s (defaults.go)", d.at, k.Key, d.text, render(k.Default))
					}
				case !sameValue(k.Default, d.value):
					t.Errorf("%s: `%s` (%s), but its default is %s (defaults.go)", d.at, k.Key, d.text, render(k.Default))
				}
			}
		}
	})
}

// exampleLine is a key as config.example.toml shows it, set or commented
// out.
type exampleLine struct {
	n     int  // line number
	read  bool // the value could be decoded (not a multi-line array)
	value any  // as TOML decodes it
}

var (
	// exampleSection is a section header, maybe commented out.
	exampleSection = regexp.MustCompile(`^#?\s*\[\[?([a-z0-9_.]+)\]\]?\s*(#.*)?$`)
	// exampleKey is a key line, maybe commented out ("# key = value").
	exampleKey = regexp.MustCompile(`^#?\s*([a-z0-9_]+)\s*=\s*(.*)$`)
)

// exampleKeys returns the keys config.example.toml shows, by full key.
func exampleKeys(text string) map[string][]exampleLine {
	keys := map[string][]exampleLine{}
	section := ""
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if m := exampleSection.FindStringSubmatch(line); m != nil {
			section = m[1]
			continue
		}
		m := exampleKey.FindStringSubmatch(line)
		if m == nil || section == "" {
			continue
		}
		l := exampleLine{n: i + 1}
		var v struct{ V any }
		if _, err := toml.Decode("V = "+m[2], &v); err == nil {
			l.read, l.value = true, v.V
		}
		key := section + "." + m[1]
		keys[key] = append(keys[key], l)
	}
	return keys
}

// statedDefault is a default the documentation states in parentheses
// after a key.
type statedDefault struct {
	at       string // file:line
	text     string // what the parentheses say
	explicit bool   // they say "default"
	value    any    // set by read
}

// read reads d's text as a value of def's type, and reports whether it is
// one: "(10000)", "(60s, the whole ...)", "(1 s)", "(default 30 days)",
// "(default `127.0.0.1:9110`; ...)". Strings and booleans count only after
// "default"; a list never.
func (d *statedDefault) read(def any) bool {
	s := strings.TrimSpace(d.text)
	if rest, ok := strings.CutPrefix(s, "default"); ok {
		s = strings.TrimSpace(strings.TrimPrefix(rest, ":"))
	} else if _, ok := def.(string); ok {
		return false
	} else if _, ok := def.(bool); ok {
		return false
	}
	var word string
	if rest, ok := strings.CutPrefix(s, "`"); ok {
		word, _, _ = strings.Cut(rest, "`")
		word = strings.Trim(word, `"`)
	} else {
		word = strings.TrimRight(strings.Fields(s + " ")[0], ";,:.")
	}
	switch def.(type) {
	case string:
		d.value = word
	case bool:
		b, err := strconv.ParseBool(word)
		d.value = b
		return err == nil
	case int:
		n, err := strconv.Atoi(word)
		d.value = n
		return err == nil
	case time.Duration:
		v, ok := docDuration(s)
		d.value = v
		return ok
	default:
		return false
	}
	return true
}

// docDuration reads a duration as the documentation writes it: "60s",
// "10m", "1 s", "10 min", "30 days", `"3h"`.
func docDuration(s string) (time.Duration, bool) {
	m := regexp.MustCompile("^[`\"]*([0-9]+)\\s*(ms|s|min|m|h|days?|hours?|minutes?|seconds?)\\b").FindStringSubmatch(s)
	if m == nil {
		return 0, false
	}
	n, _ := strconv.Atoi(m[1])
	unit := map[string]time.Duration{
		"ms": time.Millisecond, "s": time.Second, "second": time.Second, "seconds": time.Second,
		"m": time.Minute, "min": time.Minute, "minute": time.Minute, "minutes": time.Minute,
		"h": time.Hour, "hour": time.Hour, "hours": time.Hour, "day": 24 * time.Hour, "days": 24 * time.Hour,
	}[m[2]]
	return time.Duration(n) * unit, true
}

var (
	// docStated is "`key` (" and what follows up to the closing
	// parenthesis or the line's end.
	docStated = regexp.MustCompile("`([a-z0-9_.]+)` \\(([^)]*)")
	// docRow is the first cell of a row of the README's table of
	// sections: "| `[limits]` |".
	docRow = regexp.MustCompile("^\\|\\s*`\\[\\[?([a-z0-9_.]+)\\]\\]?`")
)

// statedDefaults returns, by full key, what the document called name says
// in parentheses after a key. A key named by its last part alone is taken
// for the one key with that part, or in a row of the table of sections for
// that section's.
func statedDefaults(name, text string) map[string][]statedDefault {
	byLeaf := map[string][]string{}
	isKey := map[string]bool{}
	for _, k := range configKeys {
		_, leaf := splitKey(k.Key)
		byLeaf[leaf] = append(byLeaf[leaf], k.Key)
		isKey[k.Key] = true
	}
	out := map[string][]statedDefault{}
	for i, line := range strings.Split(text, "\n") {
		row := ""
		if m := docRow.FindStringSubmatch(line); m != nil {
			row = m[1]
		}
		for _, m := range docStated.FindAllStringSubmatch(line, -1) {
			key := m[1]
			switch {
			case isKey[key]:
			case isKey[row+"."+key]:
				key = row + "." + key
			case len(byLeaf[key]) == 1:
				key = byLeaf[key][0]
			default:
				continue // not a key, or which one is not clear
			}
			text := strings.TrimSpace(m[2])
			out[key] = append(out[key], statedDefault{
				at:       fmt.Sprintf("%s:%d", name, i+1),
				text:     text,
				explicit: strings.HasPrefix(text, "default"),
			})
		}
	}
	return out
}

// splitKey splits a key into its section and its last part.
func splitKey(key string) (section, leaf string) {
	i := strings.LastIndexByte(key, '.')
	return key[:i], key[i+1:]
}

// sameValue reports whether a value decoded from TOML (or read from the
// documentation) is def.
func sameValue(def, v any) bool {
	switch d := def.(type) {
	case string:
		return v == d
	case bool:
		return v == d
	case int:
		switch n := v.(type) {
		case int64:
			return n == int64(d)
		case int:
			return n == d
		}
	case time.Duration:
		switch x := v.(type) {
		case time.Duration:
			return x == d
		case string:
			got, err := time.ParseDuration(x)
			return err == nil && got == d
		}
	case []string:
		list, ok := v.([]any)
		if !ok || len(list) != len(d) {
			return false
		}
		for i := range list {
			if list[i] != d[i] {
				return false
			}
		}
		return true
	}
	return false
}

// render writes a default, or a value decoded from TOML, as
// config.example.toml would.
func render(v any) string {
	switch v := v.(type) {
	case string:
		return strconv.Quote(v)
	case time.Duration:
		return strconv.Quote(v.String())
	case []string:
		q := make([]string, len(v))
		for i, s := range v {
			q[i] = strconv.Quote(s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	case []any:
		q := make([]string, len(v))
		for i, s := range v {
			q[i] = render(s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	return fmt.Sprint(v)
}
