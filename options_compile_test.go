package krules_test

import (
	"fmt"
	"strings"
	"testing"
)

// TestOptionMisuseDoesNotCompile: an option that does not apply to a call is
// a compile error, and so is an update function of the wrong shape given to
// Update. Each snippet is built as a program; it must fail to compile, with
// the error reported on the misuse's line. A control snippet with the right
// options must compile, so the check cannot pass for an unrelated reason.
func TestOptionMisuseDoesNotCompile(t *testing.T) {
	misuse := map[string]string{
		"get-muted":        `_, _ = s.Get(ctx, "x", krules.Muted())`,
		"get-extra":        `_, _ = s.Get(ctx, "x", krules.WithExtra(krules.Extra{"k": 1}))`,
		"set-default":      `_, _, _ = s.Set(ctx, "x", 1, krules.Default(5))`,
		"set-meta":         `_, _, _ = s.Set(ctx, "x", 1, krules.WithMeta("k", 1))`,
		"delete-default":   `_ = s.Delete(ctx, "x", krules.Default(5))`,
		"emit-muted":       `_ = app.Emit(ctx, "t", s, nil, krules.Muted())`,
		"emit-nocache":     `_ = app.Emit(ctx, "t", s, nil, krules.NoCache())`,
		"subject-default":  `_ = app.Subject("s2", krules.Default(1))`,
		"subject-extra":    `_ = app.Subject("s2", krules.WithExtra(nil))`,
		"getas-muted":      `_, _ = krules.GetAs[int](ctx, s, "x", krules.Muted())`,
		"update-wrong-sig": `_, _, _ = s.Set(ctx, "x", krules.Update(func(a, b int) int { return a }))`,
	}
	const tmpl = `package main

import (
	"context"

	"github.com/krules-go/krules"
)

func main() {
	ctx := context.Background()
	app := krules.New()
	s := app.Subject("s")
	_, _, _ = ctx, app, s
	%s // MISUSE
}
`
	control := `_, _ = s.Get(ctx, "x", krules.Default(5), krules.NoCache())
	_, _, _ = s.Set(ctx, "x", 1, krules.Muted(), krules.WithExtra(nil), krules.NoCache())
	_ = s.Delete(ctx, "x", krules.Muted())
	_ = app.Emit(ctx, "t", s, nil, krules.WithMeta("k", 1), krules.WithExtra(nil))
	_ = app.Subject("s2", krules.Muted(), krules.NoCache())
	_, _ = krules.GetAs[int](ctx, s, "x", krules.Default(1))
	_, _, _ = s.Set(ctx, "x", krules.Update(func(c int) int { return c + 1 }))`
	progs := []goProgram{{name: "control", src: fmt.Sprintf(tmpl, control)}}
	for name, code := range misuse {
		progs = append(progs, goProgram{name: name, src: fmt.Sprintf(tmpl, code)})
	}
	results := buildPrograms(t, progs)
	if out := results["control"]; out != "" {
		t.Fatalf("the control program with valid options does not compile:\n%s", out)
	}
	misuseLine := strings.Count(strings.SplitN(tmpl, "%s", 2)[0], "\n") + 1
	for name := range misuse {
		out := results[name]
		if out == "" {
			t.Errorf("%s: compiled, want a compile error (%s)", name, misuse[name])
			continue
		}
		if !strings.Contains(out, fmt.Sprintf("main.go:%d:", misuseLine)) {
			t.Errorf("%s: the compile error is not on the misuse line %d:\n%s", name, misuseLine, out)
		}
	}
}
