package krules_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// goProgram is one Go source file to build as its own main package inside
// this module (so its imports resolve to this checkout and to the module
// cache, with no network).
type goProgram struct {
	name string // directory name, for messages
	src  string
}

// buildPrograms writes each program into its own directory under a temporary
// "_"-prefixed directory of the module root (ignored by ./... patterns), runs
// `go vet` on each and returns the combined output per program (empty when it
// compiled and vetted clean). The directories are removed at the end of t.
func buildPrograms(t *testing.T, progs []goProgram) map[string]string {
	t.Helper()
	goBin := goTool(t)
	root, err := os.MkdirTemp(".", "_gocheck-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	out := make(map[string]string, len(progs))
	for _, p := range progs {
		dir := filepath.Join(root, p.name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(p.src), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(goBin, "vet", "./"+filepath.ToSlash(dir))
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local")
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		if err := cmd.Run(); err != nil {
			out[p.name] = fmt.Sprintf("%v\n%s", err, buf.String())
			continue
		}
		out[p.name] = ""
	}
	return out
}

// runProgram runs a program already written by buildPrograms' layout and
// returns its stdout.
func runProgram(t *testing.T, p goProgram) string {
	t.Helper()
	root, err := os.MkdirTemp(".", "_gorun-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.WriteFile(filepath.Join(root, "main.go"), []byte(p.src), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(goTool(t), "run", "./"+filepath.ToSlash(root))
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: go run: %v\n%s", p.name, err, stderr.String())
	}
	return stdout.String()
}

// goTool finds the go command on PATH (go test puts the running toolchain's
// go first on PATH).
func goTool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command on PATH: the README and compile checks need it: %v", err)
	}
	return p
}
