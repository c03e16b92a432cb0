//go:build unix

package storagetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/krules-go/krules/storage"
)

// fileStore is a tiny backend shared between processes: one JSON file per
// namespace, every operation a read-modify-write under an flock(2) of a lock
// file. It exists to exercise Contention (which needs a store shared by
// several OS processes) and Run on a backend that round-trips every value
// through JSON, without a server. With noCrossProcessLock it only locks
// within the process, so concurrent processes lose updates: the broken store
// Contention must catch.
type fileStore struct {
	path               string // the data file
	lock               string // the lock file
	noCrossProcessLock bool
	mu                 sync.Mutex // serialises this process's operations
}

type fileProp struct {
	Name  string          `json:"n"`
	Value json.RawMessage `json:"v"`
}

type fileSubject struct {
	Props []fileProp `json:"p"`
	Ext   []fileProp `json:"e"`
}

var tmpSeq atomic.Int64

func openFileStore(t testing.TB, namespace string, broken bool) *fileStore {
	t.Helper()
	dir := filepath.Join(os.TempDir(), "krules-storagetest-"+namespace)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if os.Getenv(envChild) == "" { // the parent owns the directory
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	return &fileStore{path: filepath.Join(dir, "data.json"), lock: filepath.Join(dir, "lock"), noCrossProcessLock: broken}
}

// do runs fn on the whole data under the locks and writes the result back
// when fn reports a change.
func (f *fileStore) do(ctx context.Context, fn func(data map[string]*fileSubject) (changed bool, err error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.noCrossProcessLock {
		lf, err := os.OpenFile(f.lock, os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return err
		}
		defer lf.Close()
		if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
			return fmt.Errorf("flock: %w", err)
		}
		defer syscall.Flock(int(lf.Fd()), syscall.LOCK_UN)
	}
	data := map[string]*fileSubject{}
	raw, err := os.ReadFile(f.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return err
	default:
		if err := json.Unmarshal(raw, &data); err != nil {
			return fmt.Errorf("decode %s: %w", f.path, err)
		}
	}
	changed, err := fn(data)
	if err != nil || !changed {
		return err
	}
	raw, err = json.Marshal(data)
	if err != nil {
		return err
	}
	tmp := fmt.Sprintf("%s.%d.%d", f.path, os.Getpid(), tmpSeq.Add(1))
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, f.path)
}

func (s *fileSubject) list(k storage.Kind) *[]fileProp {
	if k == storage.Extended {
		return &s.Ext
	}
	return &s.Props
}

func findProp(ps []fileProp, name string) int {
	return slices.IndexFunc(ps, func(p fileProp) bool { return p.Name == name })
}

func putProp(ps *[]fileProp, name string, v any) error {
	raw, err := storage.Marshal(v)
	if err != nil {
		return err
	}
	if i := findProp(*ps, name); i >= 0 {
		(*ps)[i].Value = raw
	} else {
		*ps = append(*ps, fileProp{Name: name, Value: raw})
	}
	return nil
}

func decodeProps(ps []fileProp) ([]storage.Property, error) {
	out := make([]storage.Property, len(ps))
	for i, p := range ps {
		v, err := storage.Unmarshal(p.Value)
		if err != nil {
			return nil, err
		}
		out[i] = storage.Property{Name: p.Name, Value: v}
	}
	return out, nil
}

func notFound(subject string, k storage.Key) error {
	return fmt.Errorf("filestore: property %q of subject %q: %w", k.Name, subject, storage.ErrNotFound)
}

func (f *fileStore) Load(ctx context.Context, subject string) (snap storage.Snapshot, err error) {
	err = f.do(ctx, func(data map[string]*fileSubject) (bool, error) {
		s := data[subject]
		if s == nil {
			return false, nil
		}
		if snap.Props, err = decodeProps(s.Props); err != nil {
			return false, err
		}
		snap.Ext, err = decodeProps(s.Ext)
		return false, err
	})
	return snap, err
}

func (f *fileStore) Store(ctx context.Context, subject string, b storage.Batch) error {
	return f.do(ctx, func(data map[string]*fileSubject) (bool, error) {
		if b.Empty() {
			return false, nil
		}
		s := data[subject]
		if s == nil {
			s = &fileSubject{}
			data[subject] = s
		}
		for _, k := range b.Deletes {
			l := s.list(k.Kind)
			if i := findProp(*l, k.Name); i >= 0 {
				*l = slices.Delete(*l, i, i+1)
			}
		}
		for _, w := range b.Puts {
			if err := putProp(s.list(w.Kind), w.Name, w.Value); err != nil {
				return false, err
			}
		}
		return true, nil
	})
}

func (f *fileStore) Set(ctx context.Context, subject string, k storage.Key, m storage.Mutation) (nv, ov any, err error) {
	err = f.do(ctx, func(data map[string]*fileSubject) (bool, error) {
		s := data[subject]
		if s == nil {
			s = &fileSubject{}
		}
		l := s.list(k.Kind)
		exists := false
		if i := findProp(*l, k.Name); i >= 0 {
			exists = true
			if ov, err = storage.Unmarshal((*l)[i].Value); err != nil {
				return false, err
			}
		}
		arg, _ := storage.Normalize(ov) // a private copy for the function
		if nv, err = m.Apply(arg, exists); err != nil {
			return false, fmt.Errorf("filestore: set %q of subject %q: %w", k.Name, subject, err)
		}
		data[subject] = s
		return true, putProp(l, k.Name, nv)
	})
	if err != nil {
		return nil, nil, err
	}
	return nv, ov, nil
}

func (f *fileStore) Get(ctx context.Context, subject string, k storage.Key) (v any, err error) {
	err = f.do(ctx, func(data map[string]*fileSubject) (bool, error) {
		s := data[subject]
		if s == nil {
			return false, notFound(subject, k)
		}
		l := *s.list(k.Kind)
		i := findProp(l, k.Name)
		if i < 0 {
			return false, notFound(subject, k)
		}
		v, err = storage.Unmarshal(l[i].Value)
		return false, err
	})
	return v, err
}

func (f *fileStore) Delete(ctx context.Context, subject string, k storage.Key) (old any, err error) {
	err = f.do(ctx, func(data map[string]*fileSubject) (bool, error) {
		s := data[subject]
		if s == nil {
			return false, notFound(subject, k)
		}
		l := s.list(k.Kind)
		i := findProp(*l, k.Name)
		if i < 0 {
			return false, notFound(subject, k)
		}
		if old, err = storage.Unmarshal((*l)[i].Value); err != nil {
			return false, err
		}
		*l = slices.Delete(*l, i, i+1)
		return true, nil
	})
	return old, err
}

func (f *fileStore) Flush(ctx context.Context, subject string) error {
	return f.do(ctx, func(data map[string]*fileSubject) (bool, error) {
		if _, ok := data[subject]; !ok {
			return false, nil
		}
		delete(data, subject)
		return true, nil
	})
}

func (f *fileStore) ExtProps(ctx context.Context, subject string) (ext []storage.Property, err error) {
	ext = []storage.Property{}
	err = f.do(ctx, func(data map[string]*fileSubject) (bool, error) {
		if s := data[subject]; s != nil {
			ext, err = decodeProps(s.Ext)
		}
		return false, err
	})
	return ext, err
}

func (f *fileStore) Capabilities() storage.Capabilities {
	return storage.Capabilities{Persistent: true, Shared: true}
}

var _ storage.Backend = (*fileStore)(nil)

// TestContentionFileStore runs Contention on the flock-protected file store:
// several processes really share it.
func TestContentionFileStore(t *testing.T) {
	cfg := ContentionConfig{Procs: 2, Goroutines: 4, Updates: 60}
	if testing.Short() {
		cfg.Updates = 20
	}
	cfg.Open = func(t testing.TB, namespace string) storage.Backend { return openFileStore(t, namespace, false) }
	Contention(t, cfg)
}

const envBroken = "KRULES_STORAGETEST_SELFTEST_BROKEN"

// TestContentionBrokenStore is run only by TestContentionDetectsLostUpdates,
// in its own process: Contention on a store without a cross-process lock,
// which must fail.
func TestContentionBrokenStore(t *testing.T) {
	if os.Getenv(envBroken) != "1" {
		t.Skip("run by TestContentionDetectsLostUpdates")
	}
	Contention(t, ContentionConfig{
		Procs: 2, Goroutines: 4, Updates: 100,
		Open: func(t testing.TB, namespace string) storage.Backend { return openFileStore(t, namespace, true) },
	})
}

// TestContentionDetectsLostUpdates proves Contention can fail: on a store
// whose processes do not lock each other out it must report lost updates.
func TestContentionDetectsLostUpdates(t *testing.T) {
	if os.Getenv(envChild) != "" || os.Getenv(envBroken) != "" {
		t.Skip("nested run")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), exe, "-test.run=^TestContentionBrokenStore$", "-test.count=1")
	cmd.Env = append(os.Environ(), envBroken+"=1")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("Contention on a store without cross-process locking did not fail (err %v); output:\n%s", err, out)
	}
	// Whichever check trips first, the message must name the lost update.
	markers := []string{"overwrote it", "old is not new-1", "were lost or duplicated", "saw the same old value"}
	if !slices.ContainsFunc(markers, func(m string) bool { return bytes.Contains(out, []byte(m)) }) {
		t.Errorf("failure output names none of %q:\n%s", markers, out)
	}
}
