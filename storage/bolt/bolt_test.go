package bolt_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"syscall"
	"testing"

	bbolt "go.etcd.io/bbolt"

	"github.com/krules-go/krules/storage"
	"github.com/krules-go/krules/storage/bolt"
)

// Child roles, selected by environment, run in a re-executed test binary.
const (
	envRole = "KRULES_BOLT_TEST_ROLE"
	envPath = "KRULES_BOLT_TEST_PATH"
)

func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "":
		os.Exit(m.Run())
	case "dump":
		os.Exit(childDump(os.Getenv(envPath)))
	case "store-loop":
		os.Exit(childStoreLoop(os.Getenv(envPath)))
	default:
		fmt.Fprintln(os.Stderr, "unknown role", os.Getenv(envRole))
		os.Exit(2)
	}
}

// childDump opens the file and prints the snapshot of every listed subject.
func childDump(path string) int {
	ctx := context.Background()
	b, err := bolt.Open(path, bolt.Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer b.Close()
	out := map[string]storage.Snapshot{}
	for name, err := range b.List(ctx, "") {
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		snap, err := b.Load(ctx, name)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		out[name] = snap
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// childStoreLoop stores property n<i> = i and increments "count" forever,
// printing i once both calls have returned.
func childStoreLoop(path string) int {
	ctx := context.Background()
	b, err := bolt.Open(path, bolt.Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	inc, _ := storage.NewOp(storage.OpInc, 1)
	w := bufio.NewWriter(os.Stdout)
	for i := 0; ; i++ {
		batch := storage.Batch{Puts: []storage.Write{
			{Key: storage.Key{Kind: storage.Default, Name: "n" + strconv.Itoa(i)}, Value: int64(i)},
			{Key: storage.Key{Kind: storage.Extended, Name: "last"}, Value: int64(i)},
		}}
		if err := b.Store(ctx, "crash", batch); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if _, _, err := b.Set(ctx, "crash", storage.Key{Kind: storage.Default, Name: "count"}, storage.Mutation{Op: inc}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Fprintln(w, i)
		w.Flush() // acknowledged only once it is on the pipe
	}
}

func child(t *testing.T, role, path string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"="+role, envPath+"="+path)
	cmd.Stderr = os.Stderr
	return cmd
}

func open(t *testing.T, path string) *bolt.Backend {
	t.Helper()
	b, err := bolt.Open(path, bolt.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func dk(name string) storage.Key { return storage.Key{Kind: storage.Default, Name: name} }
func ek(name string) storage.Key { return storage.Key{Kind: storage.Extended, Name: name} }

func TestRestartInNewProcess(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "restart.db")
	b, err := bolt.Open(path, bolt.Config{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]storage.Snapshot{
		"user-1": {
			Props: []storage.Property{{Name: "zeta", Value: "John"}, {Name: "alpha", Value: int64(42)}, {Name: "mid", Value: []any{1.5, true, nil}}},
			Ext:   []storage.Property{{Name: "source", Value: map[string]any{"k": "v"}}},
		},
		"user-2": {
			Props: []storage.Property{{Name: "only", Value: "x"}},
			Ext:   []storage.Property{},
		},
	}
	for name, snap := range want {
		var batch storage.Batch
		for _, p := range snap.Props {
			batch.Puts = append(batch.Puts, storage.Write{Key: dk(p.Name), Value: p.Value})
		}
		for _, p := range snap.Ext {
			batch.Puts = append(batch.Puts, storage.Write{Key: ek(p.Name), Value: p.Value})
		}
		if err := b.Store(ctx, name, batch); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	out, err := child(t, "dump", path).Output()
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	var got map[string]storage.Snapshot
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("child output %q: %v", out, err)
	}
	// The child's values went through JSON once more; compare in that form.
	wantJSON, _ := json.Marshal(want)
	var wantRT map[string]storage.Snapshot
	json.Unmarshal(wantJSON, &wantRT)
	if !reflect.DeepEqual(got, wantRT) {
		t.Fatalf("after restart:\n got %s\nwant %s", out, wantJSON)
	}
}

func TestSIGKILLMidStoreLoop(t *testing.T) {
	path := filepath.Join(t.TempDir(), "crash.db")
	cmd := child(t, "store-loop", path)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	acked := -1
	killed := false
	for sc.Scan() {
		i, err := strconv.Atoi(sc.Text())
		if err != nil {
			t.Fatalf("child printed %q", sc.Text())
		}
		if i != acked+1 {
			t.Fatalf("child printed %d after %d", i, acked)
		}
		acked = i
		if i == 150 && !killed {
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true // keep reading what was acknowledged before the kill
		}
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v", err)
	}
	if !killed {
		t.Fatal("child stopped before it was killed")
	}

	b := open(t, path)
	ctx := context.Background()
	snap, err := b.Load(ctx, "crash")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]any{}
	for _, p := range snap.Props {
		got[p.Name] = p.Value
	}
	for i := 0; i <= acked; i++ {
		if v := got["n"+strconv.Itoa(i)]; v != int64(i) {
			t.Fatalf("acknowledged store %d lost: n%d = %v", i, i, v)
		}
	}
	// count was incremented once per acknowledged index, and at most once more
	// (a Set that committed but was not printed yet).
	if c, _ := got["count"].(int64); c < int64(acked+1) || c > int64(acked+2) {
		t.Fatalf("count = %v, acknowledged %d", got["count"], acked+1)
	}
	t.Logf("%d stores acknowledged before SIGKILL, %d properties found", acked+1, len(snap.Props))
	// The file is writable again.
	if _, _, err := b.Set(ctx, "crash", dk("after"), storage.Mutation{Value: true}); err != nil {
		t.Fatal(err)
	}
}

func TestSecondOpenFailsWithErrLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locked.db")
	open(t, path)
	_, err := bolt.Open(path, bolt.Config{Timeout: -1})
	if !errors.Is(err, bolt.ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
}

func TestClosed(t *testing.T) {
	ctx := context.Background()
	b, err := bolt.Open(filepath.Join(t.TempDir(), "c.db"), bolt.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := b.Load(ctx, "s"); !errors.Is(err, storage.ErrClosed) {
		t.Fatalf("Load after Close: %v", err)
	}
	if _, _, err := b.Set(ctx, "s", dk("p"), storage.Mutation{Value: int64(1)}); !errors.Is(err, storage.ErrClosed) {
		t.Fatalf("Set after Close: %v", err)
	}
	for _, err := range b.List(ctx, "") {
		if !errors.Is(err, storage.ErrClosed) {
			t.Fatalf("List after Close: %v", err)
		}
	}
}

func TestInsertionOrderSurvivesUpdatesAndReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "order.db")
	b, err := bolt.Open(path, bolt.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var batch storage.Batch
	for i := 20; i > 0; i-- { // more than 8 puts: the indexed path
		batch.Puts = append(batch.Puts, storage.Write{Key: dk(fmt.Sprintf("p%02d", i)), Value: int64(i)})
	}
	if err := b.Store(ctx, "s", batch); err != nil {
		t.Fatal(err)
	}
	// Update in place, delete one, re-add it: it moves to the end.
	b.Set(ctx, "s", dk("p10"), storage.Mutation{Value: "ten"})
	if _, err := b.Delete(ctx, "s", dk("p15")); err != nil {
		t.Fatal(err)
	}
	b.Store(ctx, "s", storage.Batch{Deletes: []storage.Key{dk("p03")}, Puts: []storage.Write{{Key: dk("p15"), Value: int64(15)}, {Key: dk("p20"), Value: int64(-20)}}})
	b.Close()

	b = open(t, path)
	snap, err := b.Load(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	vals := map[string]any{}
	for _, p := range snap.Props {
		names = append(names, p.Name)
		vals[p.Name] = p.Value
	}
	var want []string
	for i := 20; i > 0; i-- {
		if i != 15 && i != 3 {
			want = append(want, fmt.Sprintf("p%02d", i))
		}
	}
	want = append(want, "p15")
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("order %v, want %v", names, want)
	}
	if vals["p10"] != "ten" || vals["p20"] != int64(-20) || vals["p15"] != int64(15) {
		t.Fatalf("values %v", vals)
	}
}

// TestListStreamsInChunksWhileWriting uses a NoSync file: it checks List's
// chunking and writes during iteration, not durability (1,200 fsyncs made
// it take 5 s on a loaded machine).
func TestListStreamsInChunksWhileWriting(t *testing.T) {
	ctx := context.Background()
	b, err := bolt.Open(filepath.Join(t.TempDir(), "list.db"), bolt.Config{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	const n = 600 // more than two chunks
	for i := 0; i < n; i++ {
		if _, _, err := b.Set(ctx, fmt.Sprintf("dev-%04d", i), dk("x"), storage.Mutation{Value: int64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []string{"de", "dev", "devz", "other"} { // neighbours outside the prefix
		b.Set(ctx, s, dk("x"), storage.Mutation{Value: int64(0)})
	}
	var got []string
	for name, err := range b.List(ctx, "dev-") {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, name)
		// Writing while iterating must not deadlock.
		if _, _, err := b.Set(ctx, name, dk("seen"), storage.Mutation{Value: true}); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != n {
		t.Fatalf("listed %d names, want %d", len(got), n)
	}
	for i, name := range got {
		if want := fmt.Sprintf("dev-%04d", i); name != want {
			t.Fatalf("name %d = %q, want %q", i, name, want)
		}
	}
	// Stopping early works.
	count := 0
	for range b.List(ctx, "") {
		count++
		if count == 3 {
			break
		}
	}
}

func TestSetUpdateFunctionSeesLatestAndErrorsWriteNothing(t *testing.T) {
	ctx := context.Background()
	b := open(t, filepath.Join(t.TempDir(), "set.db"))
	fn := func(old any, exists bool) (any, error) {
		if !exists {
			return int64(1), nil
		}
		return old.(int64) * 2, nil
	}
	for i := 0; i < 4; i++ {
		if _, _, err := b.Set(ctx, "s", dk("v"), storage.Mutation{Func: fn}); err != nil {
			t.Fatal(err)
		}
	}
	boom := errors.New("boom")
	_, _, err := b.Set(ctx, "s", dk("v"), storage.Mutation{Func: func(any, bool) (any, error) { return nil, boom }})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	_, _, err = b.Set(ctx, "s", dk("w"), storage.Mutation{Func: func(any, bool) (any, error) { return make(chan int), nil }})
	if !errors.Is(err, storage.ErrInvalidValue) {
		t.Fatalf("err = %v", err)
	}
	if v, err := b.Get(ctx, "s", dk("v")); err != nil || v != int64(8) {
		t.Fatalf("v = %v, %v", v, err)
	}
	if _, err := b.Get(ctx, "s", dk("w")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("w: %v", err)
	}
}

func TestCorruptRecordIsAnErrorNotAPanic(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "corrupt.db")
	b, err := bolt.Open(path, bolt.Config{})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		bk, err := tx.CreateBucket([]byte("bad"))
		if err != nil {
			return err
		}
		return bk.Put([]byte("r"), []byte{1, 5, 3, 'a'})
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	b = open(t, path)
	if _, err := b.Load(ctx, "bad"); err == nil {
		t.Fatal("Load of a corrupt record succeeded")
	}
	if _, _, err := b.Set(ctx, "bad", dk("x"), storage.Mutation{Value: int64(1)}); err == nil {
		t.Fatal("Set on a corrupt record succeeded")
	}
	// Flush still removes it.
	if err := b.Flush(ctx, "bad"); err != nil {
		t.Fatal(err)
	}
	if snap, err := b.Load(ctx, "bad"); err != nil || len(snap.Props) != 0 {
		t.Fatalf("after flush: %+v %v", snap, err)
	}
}

func TestNamesThatCouldReachTheMetaBucketAreRefused(t *testing.T) {
	ctx := context.Background()
	b := open(t, filepath.Join(t.TempDir(), "meta.db"))
	for _, name := range []string{"\x00meta", "", "a\x00b"} {
		if err := b.Flush(ctx, name); !errors.Is(err, storage.ErrInvalidName) {
			t.Errorf("Flush(%q) = %v", name, err)
		}
		if _, _, err := b.Set(ctx, name, dk("x"), storage.Mutation{Value: int64(1)}); !errors.Is(err, storage.ErrInvalidName) {
			t.Errorf("Set(%q) = %v", name, err)
		}
		if err := b.Store(ctx, name, storage.Batch{Puts: []storage.Write{{Key: dk("x"), Value: int64(1)}}}); !errors.Is(err, storage.ErrInvalidName) {
			t.Errorf("Store(%q) = %v", name, err)
		}
	}
	b.Set(ctx, "s", dk("x"), storage.Mutation{Value: int64(1)})
	var names []string
	for n, err := range b.List(ctx, "") {
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	if !reflect.DeepEqual(names, []string{"s"}) {
		t.Fatalf("List = %q", names)
	}
	// The file still opens (meta bucket intact).
	b.Close()
	open(t, b.Path())
}
