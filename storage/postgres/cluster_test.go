package postgres_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/krules-go/krules/internal/testenv"
)

// privateCluster is a PostgreSQL cluster owned by one test: initdb in a
// temporary directory, a server on a free loopback port, trust
// authentication for the user "postgres". Tests that stop or restart the
// server use one, so that the shared server of KRULES_POSTGRES_URL (and the
// other tests on it) are never disturbed.
type privateCluster struct {
	t      *testing.T
	bin    string // directory of initdb and pg_ctl
	dir    string // holds data/, the socket and the log
	port   int
	runAs  *user.User // nil: run the server binaries as the current user
	pgData string
}

// pgBinDirEnv names the directory of the PostgreSQL server binaries when
// they are not in /usr/lib/postgresql/<version>/bin or on PATH.
const pgBinDirEnv = "KRULES_PG_BINDIR"

// pgBinDir finds initdb and pg_ctl: KRULES_PG_BINDIR, the newest
// /usr/lib/postgresql/*/bin (Debian, Ubuntu), or PATH.
func pgBinDir() (string, error) {
	has := func(dir string) bool {
		for _, b := range []string{"initdb", "pg_ctl"} {
			if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	if d := os.Getenv(pgBinDirEnv); d != "" {
		if !has(d) {
			return "", fmt.Errorf("%s=%s holds no initdb and pg_ctl", pgBinDirEnv, d)
		}
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return pgVersion(b) - pgVersion(a) })
	for _, d := range dirs {
		if has(d) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil && has(filepath.Dir(p)) {
		return filepath.Dir(p), nil
	}
	return "", fmt.Errorf("no initdb and pg_ctl in /usr/lib/postgresql/*/bin or on PATH; install the PostgreSQL server or set %s", pgBinDirEnv)
}

// pgVersion is the major version in /usr/lib/postgresql/<version>/bin.
func pgVersion(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// startPrivateCluster creates and starts a cluster, stopped and removed
// when t ends. Without the server binaries the test is skipped, or fails
// under KRULES_REQUIRE_SERVICES=1. PostgreSQL refuses to run as root; as
// root the binaries run as the user "postgres" (through runuser), which
// must exist.
func startPrivateCluster(t *testing.T) *privateCluster {
	t.Helper()
	bin, err := pgBinDir()
	if err != nil {
		if testenv.Required() {
			t.Fatalf("%v (KRULES_REQUIRE_SERVICES=1)", err)
		}
		t.Skipf("private PostgreSQL cluster: %v", err)
	}
	c := &privateCluster{t: t, bin: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root, PostgreSQL needs a non-root user: %v", err)
		}
		c.runAs = u
	}
	// Not t.TempDir: its parent is private to root, and the server may run
	// as another user.
	c.dir, err = os.MkdirTemp("", "krules-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(c.dir) })
	if c.runAs != nil {
		uid, _ := strconv.Atoi(c.runAs.Uid)
		gid, _ := strconv.Atoi(c.runAs.Gid)
		if err := os.Chown(c.dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	c.pgData = filepath.Join(c.dir, "data")
	c.port = freeTCPPort(t)
	// --no-sync: the cluster's files need not survive an OS crash; the
	// server itself runs with its default durability settings.
	c.run("initdb", "-D", c.pgData, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
	c.pgCtl("start")
	t.Cleanup(func() { c.runQuiet("pg_ctl", "-D", c.pgData, "-m", "immediate", "-w", "stop") })
	return c
}

// URL is the connection URL of the cluster's "postgres" database.
func (c *privateCluster) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.port)
}

// RestartCommand returns the command that restarts the server at once
// (immediate mode: no shutdown checkpoint, as after a crash) and waits
// until it accepts connections again.
func (c *privateCluster) RestartCommand() *exec.Cmd {
	return c.command("pg_ctl", c.ctlArgs("restart", "-m", "immediate")...)
}

func (c *privateCluster) ctlArgs(action string, extra ...string) []string {
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1", c.port, c.dir)
	return append([]string{"-D", c.pgData, "-l", filepath.Join(c.dir, "log"), "-w", "-t", "60", "-o", opts, action}, extra...)
}

func (c *privateCluster) pgCtl(action string) {
	c.t.Helper()
	c.run("pg_ctl", c.ctlArgs(action)...)
}

// command builds the command running the binary name of the cluster's
// version, as the cluster's user.
func (c *privateCluster) command(name string, args ...string) *exec.Cmd {
	path := filepath.Join(c.bin, name)
	var cmd *exec.Cmd
	if c.runAs != nil {
		cmd = exec.Command("runuser", append([]string{"-u", c.runAs.Username, "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = c.dir
	return cmd
}

func (c *privateCluster) run(name string, args ...string) {
	c.t.Helper()
	cmd := c.command(name, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(c.dir, "log"))
		c.t.Fatalf("%s: %v\n%s\nserver log:\n%s", strings.Join(cmd.Args, " "), err, out, log)
	}
}

func (c *privateCluster) runQuiet(name string, args ...string) {
	c.command(name, args...).Run()
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
