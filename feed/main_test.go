package feed_test

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// childDir holds the child binary (see childExe); TestMain removes it.
var childDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if childDir != "" {
		os.RemoveAll(childDir)
	}
	os.Exit(code)
}

var child struct {
	once sync.Once
	path string
	err  error
}

// childExe returns the path of the feedchild command (internal/feedchild),
// built once per test run without the race detector: the crash tests start
// and kill it hundreds of times, and a race-instrumented child starts and
// writes several times slower (the parent, which checks the results, keeps
// the -race of the test run). go build caches it between runs.
func childExe(t testing.TB) string {
	t.Helper()
	child.once.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			child.err = fmt.Errorf("no go command on PATH (the feed crash tests build their child process): %w", err)
			return
		}
		if childDir, err = os.MkdirTemp("", "krules-feedchild-"); err != nil {
			child.err = err
			return
		}
		path := filepath.Join(childDir, "feedchild")
		cmd := exec.Command(goBin, "build", "-o", path, "./internal/feedchild")
		// The caller's GOFLAGS stay (read-only go.mod by default: the build never
		// rewrites go.mod or go.sum of the checkout).
		cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
		if out, err := cmd.CombinedOutput(); err != nil {
			child.err = fmt.Errorf("go build ./internal/feedchild: %v\n%s", err, out)
			return
		}
		child.path = path
	})
	if child.err != nil {
		t.Fatal(child.err)
	}
	return child.path
}

// startChild starts the child with role and env and, when ready is true,
// waits for its "ready" line. The child is killed at the end of t if still
// running.
func startChild(t testing.TB, role string, ready bool, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(childExe(t))
	cmd.Env = append(append(os.Environ(), "KRULES_FEED_CHILD="+role), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if ready {
		if line, _ := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("%s child did not start: %q", role, line)
		}
	}
	return cmd
}
