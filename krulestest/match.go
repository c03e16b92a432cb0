package krulestest

import (
	"encoding/json"
	"fmt"
	"path"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage"
)

// Matcher describes the events an assertion looks for. Build one with
// Expect, Changed, Deleted or Any and narrow it with its methods; each
// method returns the Matcher. A Matcher is not safe for concurrent
// modification; share it only once built.
//
// Values are compared as krules compares property values: after
// normalisation, numbers numerically (1500 matches int64(1500) and
// 1500.0), deep for lists and maps; values outside the JSON model (a
// time.Time in a payload) with reflect.DeepEqual.
type Matcher struct {
	typ   string // "" any type
	conds []cond
}

type cond struct {
	desc string
	ok   func(Recorded) bool
}

// Expect matches events whose type is eventType, or matches it as a glob
// when eventType contains '*', '?' or '[' ("order.*").
func Expect(eventType string) *Matcher { return &Matcher{typ: eventType} }

// Any matches every event.
func Any() *Matcher { return &Matcher{} }

// Changed matches krules.PropertyChanged events of the property prop.
func Changed(prop string) *Matcher { return Expect(krules.PropertyChanged).Property(prop) }

// Deleted matches krules.PropertyDeleted events of the property prop.
func Deleted(prop string) *Matcher { return Expect(krules.PropertyDeleted).Property(prop) }

func (m *Matcher) add(desc string, ok func(Recorded) bool) *Matcher {
	m.conds = append(m.conds, cond{desc, ok})
	return m
}

// Subject requires the event to be about the named subject.
func (m *Matcher) Subject(name string) *Matcher {
	return m.add("subject "+strconv.Quote(name), func(r Recorded) bool { return r.Subject == name })
}

// Property requires the event's PropertyName to be prop.
func (m *Matcher) Property(prop string) *Matcher {
	return m.add("property "+strconv.Quote(prop), func(r Recorded) bool { return r.PropertyName == prop })
}

// From requires the event's OldValue to equal v (nil: the property was
// missing or null).
func (m *Matcher) From(v any) *Matcher {
	return m.add("from "+show(v), func(r Recorded) bool { return equal(v, r.OldValue) })
}

// To requires the event's NewValue to equal v.
func (m *Matcher) To(v any) *Matcher {
	return m.add("to "+show(v), func(r Recorded) bool { return equal(v, r.NewValue) })
}

// Payload requires the payload to hold key with a value equal to v.
func (m *Matcher) Payload(key string, v any) *Matcher {
	return m.add(fmt.Sprintf("payload[%q]=%s", key, show(v)), func(r Recorded) bool {
		got, ok := r.Payload[key]
		return ok && equal(v, got)
	})
}

// Extra requires the event's Extra to hold key with a value equal to v.
func (m *Matcher) Extra(key string, v any) *Matcher {
	return m.add(fmt.Sprintf("extra[%q]=%s", key, show(v)), func(r Recorded) bool {
		got, ok := r.Extra[key]
		return ok && equal(v, got)
	})
}

// Meta requires the event's metadata to hold key with a value equal to v.
func (m *Matcher) Meta(key string, v any) *Matcher {
	return m.add(fmt.Sprintf("meta[%q]=%s", key, show(v)), func(r Recorded) bool {
		got, ok := r.Meta[key]
		return ok && equal(v, got)
	})
}

// Where adds a predicate of your own, described by desc in failures.
func (m *Matcher) Where(desc string, fn func(Recorded) bool) *Matcher {
	return m.add(desc, fn)
}

// Matches reports whether r satisfies every condition of m.
func (m *Matcher) Matches(r Recorded) bool {
	if m.typ != "" && !typeMatches(m.typ, r.Type) {
		return false
	}
	for _, c := range m.conds {
		if !c.ok(r) {
			return false
		}
	}
	return true
}

// String describes m ("subject-property-changed, property \"status\", to \"paid\"").
func (m *Matcher) String() string {
	parts := make([]string, 0, len(m.conds)+1)
	if m.typ != "" {
		parts = append(parts, m.typ)
	} else {
		parts = append(parts, "any event")
	}
	for _, c := range m.conds {
		parts = append(parts, c.desc)
	}
	return strings.Join(parts, ", ")
}

func typeMatches(pattern, typ string) bool {
	if !strings.ContainsAny(pattern, "*?[") {
		return pattern == typ
	}
	// fnmatch's negation is "[!...]"; path.Match spells it "[^...]". Event
	// types carry no '/', so '*' crosses dots as in krules.
	ok, err := path.Match(strings.ReplaceAll(pattern, "[!", "[^"), typ)
	return err == nil && ok
}

func equal(want, got any) bool {
	w, errW := storage.Normalize(want)
	g, errG := storage.Normalize(got)
	if errW == nil && errG == nil {
		return storage.Equal(w, g)
	}
	return reflect.DeepEqual(want, got)
}

func show(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		return strconv.Quote(x)
	case fmt.Stringer:
		return x.String()
	}
	if n, err := storage.Normalize(v); err == nil {
		if b, err := json.Marshal(n); err == nil {
			return string(b)
		}
	}
	return fmt.Sprintf("%v", v)
}

// AssertEmitted fails t unless at least one recorded event matches m, and
// returns the first match (zero Recorded on failure).
func (r *Recorder) AssertEmitted(t testing.TB, m *Matcher) Recorded {
	t.Helper()
	evs := r.Events()
	for _, e := range evs {
		if m.Matches(e) {
			return e
		}
	}
	t.Errorf("krulestest: expected an event: %s\ngot:\n%s", m, dump(evs))
	return Recorded{}
}

// AssertNotEmitted fails t if any recorded event matches m.
func (r *Recorder) AssertNotEmitted(t testing.TB, m *Matcher) {
	t.Helper()
	evs := r.Events()
	var hits []Recorded
	for _, e := range evs {
		if m.Matches(e) {
			hits = append(hits, e)
		}
	}
	if len(hits) > 0 {
		t.Errorf("krulestest: expected no event: %s\ngot %d:\n%s\nall events:\n%s", m, len(hits), dump(hits), dump(evs))
	}
}

// AssertCount fails t unless exactly n recorded events match m.
func (r *Recorder) AssertCount(t testing.TB, m *Matcher, n int) {
	t.Helper()
	if got := len(r.Filter(m)); got != n {
		t.Errorf("krulestest: expected %d events: %s\ngot %d; all events:\n%s", n, m, got, dump(r.Events()))
	}
}

// AssertSequence fails t unless the matchers match recorded events in this
// order (other events may come between them). The failure names the first
// matcher not found after the previous match.
func (r *Recorder) AssertSequence(t testing.TB, ms ...*Matcher) {
	t.Helper()
	evs := r.Events()
	i := 0
	for k, m := range ms {
		for i < len(evs) && !m.Matches(evs[i]) {
			i++
		}
		if i == len(evs) {
			after := "from the start"
			if k > 0 {
				after = fmt.Sprintf("after step %d (%s)", k, ms[k-1])
			}
			t.Errorf("krulestest: sequence step %d of %d not found %s: expected %s\ngot:\n%s", k+1, len(ms), after, m, dump(evs))
			return
		}
		i++
	}
}

// AssertTypes fails t unless the recorded event types are exactly types, in
// order; the failure shows both lists and the first difference.
func (r *Recorder) AssertTypes(t testing.TB, types ...string) {
	t.Helper()
	evs := r.Events()
	got := make([]string, len(evs))
	for i, e := range evs {
		got[i] = e.Type
	}
	if slices.Equal(got, types) {
		return
	}
	at := 0
	for at < len(got) && at < len(types) && got[at] == types[at] {
		at++
	}
	t.Errorf("krulestest: event types differ at position %d\nexpected: %q\ngot:      %q\nevents:\n%s", at, types, got, dump(evs))
}
