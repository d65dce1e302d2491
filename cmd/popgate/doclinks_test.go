package main

import (
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"
)

// TestDocLinks: every relative link in README.md, docs/*.md and the other
// Markdown files of the repository leads somewhere: the file or directory
// exists, and an #anchor into a Markdown file is made by one of its
// headings, by GitHub's rules.
func TestDocLinks(t *testing.T) {
	const root = "../.."
	files := []string{"README.md"}
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) == 0 {
		t.Fatal("no docs/*.md")
	}
	for _, d := range docs {
		rel, _ := filepath.Rel(root, d)
		files = append(files, filepath.ToSlash(rel))
	}
	// The other Markdown files (deploy/grafana/queries.md, ...).
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			// node_modules: the npm packages of interop/oidcprovider,
			// installed by scripts/test, with their own documents.
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		if strings.HasSuffix(name, ".md") && !slices.Contains(files, rel) {
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	anchorsOf := map[string]map[string]bool{}
	anchors := func(file string) (map[string]bool, error) {
		if a, ok := anchorsOf[file]; ok {
			return a, nil
		}
		data, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			return nil, err
		}
		a := headingAnchors(string(data))
		anchorsOf[file] = a
		return a, nil
	}

	checked := 0
	for _, file := range files {
		data, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range markdownLinks(string(data)) {
			at := fmt.Sprintf("%s:%d", file, l.line)
			target, anchor, _ := strings.Cut(l.dest, "#")
			if strings.Contains(target, ":") || strings.HasPrefix(target, "//") {
				continue // https:, mailto:, ...: not the repository's
			}
			checked++
			if p, err := url.PathUnescape(target); err == nil {
				target = p
			}
			resolved := file // #anchor alone: this file
			if target != "" {
				if strings.HasPrefix(target, "/") {
					resolved = strings.TrimPrefix(target, "/")
				} else {
					resolved = filepath.ToSlash(filepath.Join(filepath.Dir(file), target))
				}
				if resolved == ".." || strings.HasPrefix(resolved, "../") {
					t.Errorf("%s: [%s](%s): leads out of the repository", at, l.text, l.dest)
					continue
				}
				if _, err := os.Stat(filepath.Join(root, resolved)); err != nil {
					t.Errorf("%s: [%s](%s): %s does not exist", at, l.text, l.dest, resolved)
					continue
				}
			}
			if anchor == "" {
				continue
			}
			if !strings.HasSuffix(resolved, ".md") {
				t.Errorf("%s: [%s](%s): an anchor into %s, which is no Markdown file", at, l.text, l.dest, resolved)
				continue
			}
			a, err := anchors(resolved)
			if err != nil {
				t.Errorf("%s: [%s](%s): %v", at, l.text, l.dest, err)
				continue
			}
			if !a[strings.ToLower(anchor)] {
				t.Errorf("%s: [%s](%s): no heading of %s makes the anchor #%s", at, l.text, l.dest, resolved, anchor)
			}
		}
	}
	if checked == 0 {
		t.Error("no relative links found: the link parser is broken")
	}
	t.Logf("%d relative links in %d files", checked, len(files))
}

// TestHeadingAnchors: the anchors GitHub makes of headings.
func TestHeadingAnchors(t *testing.T) {
	text := strings.Join([]string{
		"# popgate",
		"## Shutdown and upgrades (SIGTERM)",
		"### Kubernetes: several replicas behind a load balancer",
		"## ACME orders: the budget, the back-off and the approval hook",
		"## `[tls.acme]` and `max_connections`",
		"## [Linked](docs/x.md) *heading*",
		"## Metrics",
		"## Metrics",
		"## Metrics ##",
		"```",
		"# not a heading",
		"```",
		"Setext heading",
		"--------------",
	}, "\n")
	got := headingAnchors(text)
	want := []string{
		"popgate",
		"shutdown-and-upgrades-sigterm",
		"kubernetes-several-replicas-behind-a-load-balancer",
		"acme-orders-the-budget-the-back-off-and-the-approval-hook",
		"tlsacme-and-max_connections",
		"linked-heading",
		"metrics", "metrics-1", "metrics-2",
		"setext-heading",
	}
	for _, w := range want {
		if !got[w] {
			t.Errorf("no anchor %q; got %v", w, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d anchors, want %d: %v", len(got), len(want), got)
	}
}

// mdLink is a link [text](dest) of a Markdown file.
type mdLink struct {
	line       int
	text, dest string
}

var (
	// mdLinkRE is an inline link or image: [text](dest) or
	// [text](dest "title"). The text may hold one level of brackets
	// ([`[limits]`](...)).
	mdLinkRE = regexp.MustCompile(`!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^()\s<>]*)>?(?:\s+"[^"]*")?\s*\)`)
	// mdCodeSpan is inline code, whose brackets are no links.
	mdCodeSpan = regexp.MustCompile("(`+)[^`]*?(`+)")
	// mdFence opens or closes a fenced code block.
	mdFence = regexp.MustCompile("^\\s{0,3}(```|~~~)")
	// mdHeading is an ATX heading.
	mdHeading = regexp.MustCompile(`^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$`)
	// mdSetext underlines a setext heading.
	mdSetext = regexp.MustCompile(`^\s{0,3}(=+|-+)\s*$`)
)

// markdownLinks returns the inline links of a Markdown text outside code
// blocks and code spans.
func markdownLinks(text string) []mdLink {
	var out []mdLink
	inFence := false
	for i, line := range strings.Split(text, "\n") {
		if mdFence.MatchString(line) {
			inFence = !inFence
			continue
		}
		if inFence {
			continue
		}
		// Code spans hide their brackets, except where a link's text
		// is one ([`deploy/`](deploy/)): blank out the spans, keeping
		// the link syntax around them.
		masked := mdCodeSpan.ReplaceAllStringFunc(line, func(s string) string {
			return strings.Repeat("x", len(s))
		})
		for _, m := range mdLinkRE.FindAllStringSubmatchIndex(masked, -1) {
			out = append(out, mdLink{
				line: i + 1,
				text: line[m[2]:m[3]],
				dest: line[m[4]:m[5]],
			})
		}
	}
	return out
}

// headingAnchors returns the anchors GitHub makes of a Markdown text's
// headings: the heading's text as rendered (no code ticks, emphasis or link
// targets), lower-cased, everything but letters, digits, spaces, hyphens
// and underscores dropped, spaces turned into hyphens; a repeated anchor
// gets -1, -2, ... appended.
func headingAnchors(text string) map[string]bool {
	anchors := map[string]bool{}
	seen := map[string]int{}
	add := func(heading string) {
		slug := githubSlug(heading)
		a := slug
		if n := seen[slug]; n > 0 {
			a = fmt.Sprintf("%s-%d", slug, n)
		}
		seen[slug]++
		anchors[a] = true
	}
	inFence := false
	prev := ""
	for _, line := range strings.Split(text, "\n") {
		if mdFence.MatchString(line) {
			inFence = !inFence
			prev = ""
			continue
		}
		if inFence {
			continue
		}
		if m := mdHeading.FindStringSubmatch(line); m != nil {
			add(m[2])
			prev = ""
			continue
		}
		if mdSetext.MatchString(line) && strings.TrimSpace(prev) != "" && !strings.HasPrefix(strings.TrimSpace(prev), "|") {
			add(strings.TrimSpace(prev))
			prev = ""
			continue
		}
		prev = line
	}
	return anchors
}

// mdInlineLink is a link in a heading, whose text alone is rendered.
var mdInlineLink = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)

// githubSlug makes a heading's anchor as GitHub does.
func githubSlug(heading string) string {
	s := mdInlineLink.ReplaceAllString(heading, "$1")
	s = strings.NewReplacer("`", "", "*", "").Replace(s)
	s = strings.ToLower(strings.TrimSpace(s))
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}
