package krules_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// readmeBlock is one ```go block of README.md.
type readmeBlock struct {
	line int // 1-based line of the opening fence
	src  string
}

func readmeGoBlocks(t *testing.T) []readmeBlock {
	t.Helper()
	data, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	var (
		blocks []readmeBlock
		cur    *readmeBlock
		body   strings.Builder
	)
	for i, l := range strings.Split(string(data), "\n") {
		switch {
		case cur == nil && strings.TrimSpace(l) == "```go":
			cur = &readmeBlock{line: i + 1}
			body.Reset()
		case cur != nil && strings.TrimSpace(l) == "```":
			cur.src = body.String()
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			body.WriteString(l)
			body.WriteByte('\n')
		}
	}
	if cur != nil {
		t.Fatalf("README.md:%d: unterminated ```go block", cur.line)
	}
	return blocks
}

// TestREADMEGoBlocks compiles (go vet) every ```go block of README.md as a
// program of its own, so the README cannot drift from the API. Each block must
// be a complete file (package clause and imports). A block with an
// "// Output:" comment is also run, and its stdout must equal the comment
// lines that follow, as in an Example test.
func TestREADMEGoBlocks(t *testing.T) {
	blocks := readmeGoBlocks(t)
	if len(blocks) == 0 {
		t.Fatal("README.md has no ```go block")
	}
	var progs []goProgram
	for _, b := range blocks {
		if !strings.HasPrefix(strings.TrimSpace(b.src), "package ") {
			t.Errorf("README.md:%d: a ```go block must be a complete file starting with a package clause", b.line)
			continue
		}
		progs = append(progs, goProgram{name: fmt.Sprintf("line%d", b.line), src: b.src})
	}
	results := buildPrograms(t, progs)
	for _, p := range progs {
		if out := results[p.name]; out != "" {
			t.Errorf("README.md block at %s does not vet clean:\n%s", p.name, out)
			continue
		}
		want, ok := expectedOutput(p.src)
		if !ok {
			continue
		}
		if got := runProgram(t, p); strings.TrimSpace(got) != strings.TrimSpace(want) {
			t.Errorf("README.md block at %s prints\n%s\nwant (its // Output: comment)\n%s", p.name, got, want)
		}
	}
}

// expectedOutput returns the comment lines after a "// Output:" line.
func expectedOutput(src string) (string, bool) {
	lines := strings.Split(src, "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) != "// Output:" {
			continue
		}
		var want []string
		for _, o := range lines[i+1:] {
			o = strings.TrimSpace(o)
			if !strings.HasPrefix(o, "//") {
				break
			}
			want = append(want, strings.TrimSpace(strings.TrimPrefix(o, "//")))
		}
		return strings.Join(want, "\n"), true
	}
	return "", false
}
