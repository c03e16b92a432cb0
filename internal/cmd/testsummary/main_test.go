package main

import (
	"strings"
	"testing"
)

// stream is a `go test -json` stream of three packages: one passing with
// skipped integration tests, one failing, one without test files.
const stream = `{"Action":"start","Package":"ex/pg"}
{"Action":"run","Package":"ex/pg","Test":"TestConformance"}
{"Action":"output","Package":"ex/pg","Test":"TestConformance","Output":"=== RUN   TestConformance\n"}
{"Action":"run","Package":"ex/pg","Test":"TestConformance/Load"}
{"Action":"output","Package":"ex/pg","Test":"TestConformance/Load","Output":"=== RUN   TestConformance/Load\n"}
{"Action":"output","Package":"ex/pg","Test":"TestConformance/Load","Output":"    testenv.go:36: KRULES_POSTGRES_URL not set: skipping integration test\n"}
{"Action":"output","Package":"ex/pg","Test":"TestConformance/Load","Output":"--- SKIP: TestConformance/Load (0.00s)\n"}
{"Action":"skip","Package":"ex/pg","Test":"TestConformance/Load"}
{"Action":"run","Package":"ex/pg","Test":"TestConformance/Store"}
{"Action":"output","Package":"ex/pg","Test":"TestConformance/Store","Output":"    testenv.go:36: KRULES_POSTGRES_URL not set: skipping integration test\n"}
{"Action":"skip","Package":"ex/pg","Test":"TestConformance/Store"}
{"Action":"output","Package":"ex/pg","Test":"TestConformance","Output":"--- PASS: TestConformance (0.00s)\n"}
{"Action":"pass","Package":"ex/pg","Test":"TestConformance"}
{"Action":"run","Package":"ex/pg","Test":"TestContention"}
{"Action":"output","Package":"ex/pg","Test":"TestContention","Output":"    testenv.go:36: KRULES_POSTGRES_URL not set: skipping integration test\n"}
{"Action":"skip","Package":"ex/pg","Test":"TestContention"}
{"Action":"run","Package":"ex/pg","Test":"TestPlain"}
{"Action":"output","Package":"ex/pg","Test":"TestPlain","Output":"    plain_test.go:9: chatter of a passing test\n"}
{"Action":"pass","Package":"ex/pg","Test":"TestPlain"}
{"Action":"output","Package":"ex/pg","Output":"PASS\n"}
{"Action":"output","Package":"ex/pg","Output":"ok  \tex/pg\t0.02s\n"}
{"Action":"pass","Package":"ex/pg"}
{"Action":"start","Package":"ex/bad"}
{"Action":"run","Package":"ex/bad","Test":"TestGood"}
{"Action":"output","Package":"ex/bad","Test":"TestGood","Output":"    good_test.go:5: hidden\n"}
{"Action":"pass","Package":"ex/bad","Test":"TestGood"}
{"Action":"run","Package":"ex/bad","Test":"TestBroken"}
{"Action":"output","Package":"ex/bad","Test":"TestBroken","Output":"    bad_test.go:7: got 1, want 2\n"}
{"Action":"output","Package":"ex/bad","Test":"TestBroken","Output":"--- FAIL: TestBroken (0.00s)\n"}
{"Action":"fail","Package":"ex/bad","Test":"TestBroken"}
{"Action":"output","Package":"ex/bad","Output":"FAIL\n"}
{"Action":"output","Package":"ex/bad","Output":"FAIL\tex/bad\t0.01s\n"}
{"Action":"fail","Package":"ex/bad"}
{"Action":"output","Package":"ex/none","Output":"?   \tex/none\t[no test files]\n"}
{"Action":"skip","Package":"ex/none"}
`

func TestSummary(t *testing.T) {
	var out strings.Builder
	failed, err := summarize(strings.NewReader(stream), &out)
	if err != nil {
		t.Fatal(err)
	}
	if !failed {
		t.Error("a failed package is not reported as a failure")
	}
	want := "ok  \tex/pg\t0.02s\n" +
		"    skipped TestConformance (2 subtests), TestContention: KRULES_POSTGRES_URL not set: skipping integration test\n" +
		"    bad_test.go:7: got 1, want 2\n" +
		"--- FAIL: TestBroken (0.00s)\n" +
		"FAIL\n" +
		"FAIL\tex/bad\t0.01s\n" +
		"?   \tex/none\t[no test files]\n" +
		"testsummary: 1 packages ok, 1 failed, 3 tests skipped (reasons above)\n" +
		"FAIL\n"
	if got := out.String(); got != want {
		t.Errorf("summary:\n%s\nwant:\n%s", got, want)
	}
}

func TestSummaryAllPass(t *testing.T) {
	in := `{"Action":"output","Package":"ex/a","Output":"ok  \tex/a\t0.1s\n"}
{"Action":"pass","Package":"ex/a"}
`
	var out strings.Builder
	failed, err := summarize(strings.NewReader(in), &out)
	if err != nil || failed {
		t.Fatalf("summarize = (%v, %v), want (false, nil)", failed, err)
	}
	if want := "ok  \tex/a\t0.1s\ntestsummary: 1 packages ok, 0 failed, no test skipped\n"; out.String() != want {
		t.Errorf("summary %q, want %q", out.String(), want)
	}
}

// A package whose binary died without a final event (or a stream cut
// short) is a failure, with the output of its unfinished test.
func TestSummaryUnfinishedPackage(t *testing.T) {
	in := `{"Action":"run","Package":"ex/a","Test":"TestHang"}
{"Action":"output","Package":"ex/a","Test":"TestHang","Output":"panic: test timed out after 10m0s\n"}
`
	var out strings.Builder
	failed, err := summarize(strings.NewReader(in), &out)
	if err != nil || !failed {
		t.Fatalf("summarize = (%v, %v), want (true, nil)", failed, err)
	}
	if !strings.Contains(out.String(), "panic: test timed out") || !strings.Contains(out.String(), "FAIL\tex/a") {
		t.Errorf("summary lacks the panic or the FAIL line:\n%s", out.String())
	}
}

// Build failures and non-JSON lines (errors of go test itself) pass
// through; a failed build is a failure.
func TestSummaryBuildFailure(t *testing.T) {
	in := `{"ImportPath":"ex/b [ex/b.test]","Action":"build-output","Output":"b.go:3:1: syntax error\n"}
{"ImportPath":"ex/b [ex/b.test]","Action":"build-fail"}
{"Action":"output","Package":"ex/b","Output":"FAIL\tex/b [build failed]\n"}
{"Action":"fail","Package":"ex/b"}
go: some error
`
	var out strings.Builder
	failed, err := summarize(strings.NewReader(in), &out)
	if err != nil || !failed {
		t.Fatalf("summarize = (%v, %v), want (true, nil)", failed, err)
	}
	for _, s := range []string{"b.go:3:1: syntax error", "FAIL\tex/b [build failed]", "go: some error"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("summary lacks %q:\n%s", s, out.String())
		}
	}
}

func TestSummaryNoEvents(t *testing.T) {
	failed, err := summarize(strings.NewReader(""), &strings.Builder{})
	if err == nil || !failed {
		t.Errorf("summarize of nothing = (%v, %v), want a failure with an error", failed, err)
	}
}
