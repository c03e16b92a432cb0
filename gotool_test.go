package krules_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
// `go vet` on them and returns the output per program (empty when it
// compiled and vetted clean). The directories are removed at the end of t.
//
// One `go vet` command checks every program (the go command's start and
// package loading, most of the cost, are paid once); its output lines name
// the program's directory, which assigns them. A program the failing
// command's output does not name is vetted again on its own, so an error
// that names no program (or names it differently) is never lost.
func buildPrograms(t *testing.T, progs []goProgram) map[string]string {
	t.Helper()
	root, err := os.MkdirTemp(".", "_gocheck-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	dirs := make([]string, len(progs))
	for i, p := range progs {
		dir := filepath.Join(root, p.name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(p.src), 0o644); err != nil {
			t.Fatal(err)
		}
		dirs[i] = "./" + filepath.ToSlash(dir)
	}
	out := make(map[string]string, len(progs))
	all, err := goVet(t, dirs...)
	if err == nil {
		for _, p := range progs {
			out[p.name] = ""
		}
		return out
	}
	lines := strings.Split(all, "\n")
	for i, p := range progs {
		dir := strings.TrimPrefix(dirs[i], "./")
		var mine []string
		for _, l := range lines {
			if strings.Contains(l, dir+"/") || strings.HasSuffix(l, "/"+dir) || strings.HasSuffix(l, "/"+dir+"]") {
				mine = append(mine, l)
			}
		}
		if len(mine) > 0 {
			out[p.name] = fmt.Sprintf("%v\n%s", err, strings.Join(mine, "\n"))
			continue
		}
		one, err := goVet(t, dirs[i])
		if err != nil {
			out[p.name] = fmt.Sprintf("%v\n%s", err, one)
			continue
		}
		out[p.name] = ""
	}
	return out
}

// goVet runs `go vet` on the package directories and returns its combined
// output.
func goVet(t *testing.T, dirs ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(goTool(t), append([]string{"vet"}, dirs...)...)
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local")
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	return buf.String(), err
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
