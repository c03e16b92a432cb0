package krules

import (
	"strings"
	"unicode/utf8"
)

// A pattern is a compiled Python-fnmatch glob: '*' matches any run of
// characters (dots and slashes included), '?' exactly one character,
// '[abc]' / '[a-z]' one character of the set, '[!abc]' one character not in
// it; an unclosed '[' is literal; everything else is literal. The whole event
// type must match, case-sensitively. Characters are Unicode code points.
type pattern struct {
	src     string
	literal bool   // no metacharacter: exact comparison
	prefix  string // literal characters before the first metacharacter
	// prefixStar: the pattern is prefix followed by a single trailing '*'.
	prefixStar bool
	toks       []token
}

type tokKind uint8

const (
	tLit tokKind = iota
	tAny
	tStar
	tClass
	tNever // a class that can match nothing
)

type token struct {
	kind   tokKind
	r      rune
	neg    bool
	items  []classItem
	anyOne bool // negated empty class: any character
}

type classItem struct{ lo, hi rune }

func hasMeta(s string) bool { return strings.ContainsAny(s, "*?[") }

func compilePattern(src string) *pattern {
	p := &pattern{src: src}
	if !hasMeta(src) {
		p.literal = true
		p.prefix = src
		return p
	}
	p.prefix = src[:strings.IndexAny(src, "*?[")]
	if strings.IndexAny(src, "*?[") == len(src)-1 && src[len(src)-1] == '*' {
		p.prefixStar = true
		return p
	}
	pat := []rune(src)
	n := len(pat)
	for i := 0; i < n; {
		c := pat[i]
		i++
		switch c {
		case '*':
			if len(p.toks) == 0 || p.toks[len(p.toks)-1].kind != tStar {
				p.toks = append(p.toks, token{kind: tStar})
			}
		case '?':
			p.toks = append(p.toks, token{kind: tAny})
		case '[':
			tok, next, ok := parseClass(pat, i)
			if !ok {
				p.toks = append(p.toks, token{kind: tLit, r: '['})
				continue
			}
			p.toks = append(p.toks, tok)
			i = next
		default:
			p.toks = append(p.toks, token{kind: tLit, r: c})
		}
	}
	return p
}

// parseClass ports the bracket handling of CPython's fnmatch.translate. i is
// the index just after '['. It returns the token and the index after ']'.
func parseClass(pat []rune, i int) (token, int, bool) {
	n := len(pat)
	j := i
	if j < n && pat[j] == '!' {
		j++
	}
	if j < n && pat[j] == ']' {
		j++
	}
	for j < n && pat[j] != ']' {
		j++
	}
	if j >= n {
		return token{}, 0, false
	}
	var chunks [][]rune
	hasDash := false
	for _, r := range pat[i:j] {
		if r == '-' {
			hasDash = true
			break
		}
	}
	if !hasDash {
		chunks = [][]rune{append([]rune(nil), pat[i:j]...)}
	} else {
		k := i + 1
		if pat[i] == '!' {
			k = i + 2
		}
		for {
			k = indexRune(pat, '-', k, j)
			if k < 0 {
				break
			}
			chunks = append(chunks, append([]rune(nil), pat[i:k]...))
			i = k + 1
			k = k + 3
		}
		if chunk := pat[i:j]; len(chunk) > 0 {
			chunks = append(chunks, append([]rune(nil), chunk...))
		} else {
			last := len(chunks) - 1
			chunks[last] = append(chunks[last], '-')
		}
		// Remove empty (reversed) ranges, as CPython does.
		for k := len(chunks) - 1; k > 0; k-- {
			a, b := chunks[k-1], chunks[k]
			if len(a) > 0 && len(b) > 0 && a[len(a)-1] > b[0] {
				merged := append(append([]rune(nil), a[:len(a)-1]...), b[1:]...)
				chunks[k-1] = merged
				chunks = append(chunks[:k], chunks[k+1:]...)
			}
		}
	}
	next := j + 1
	total := len(chunks) - 1 // the hyphens joining chunks
	for _, c := range chunks {
		total += len(c)
	}
	if total <= 0 {
		return token{kind: tNever}, next, true
	}
	if len(chunks) == 1 && len(chunks[0]) == 1 && chunks[0][0] == '!' {
		return token{kind: tClass, anyOne: true}, next, true
	}
	tok := token{kind: tClass}
	if len(chunks[0]) > 0 && chunks[0][0] == '!' {
		tok.neg = true
		chunks[0] = chunks[0][1:]
	}
	// The class is the chunks joined by range hyphens, read the way Python's
	// re reads it: a character followed by a joining hyphen and another
	// character is a range; a joining hyphen with nothing before it (the
	// first chunk emptied by the cleanup, e.g. "[b-0!-0]" becomes "[^-0]")
	// or nothing after it is a literal '-'.
	type elem struct {
		r    rune
		join bool
	}
	var elems []elem
	for ci, c := range chunks {
		if ci > 0 {
			elems = append(elems, elem{'-', true})
		}
		for _, r := range c {
			elems = append(elems, elem{r: r})
		}
	}
	for p := 0; p < len(elems); p++ {
		lo := elems[p].r
		if p+2 < len(elems) && elems[p+1].join {
			tok.items = append(tok.items, classItem{lo, elems[p+2].r})
			p += 2
			continue
		}
		tok.items = append(tok.items, classItem{lo, lo})
	}
	return tok, next, true
}

func indexRune(s []rune, r rune, from, to int) int {
	for k := from; k < to; k++ {
		if s[k] == r {
			return k
		}
	}
	return -1
}

func (t *token) matchRune(r rune) bool {
	switch t.kind {
	case tLit:
		return r == t.r
	case tAny:
		return true
	case tNever:
		return false
	case tClass:
		if t.anyOne {
			return true
		}
		in := false
		for _, it := range t.items {
			if r >= it.lo && r <= it.hi {
				in = true
				break
			}
		}
		return in != t.neg
	}
	return false
}

// match reports whether s matches the whole pattern.
func (p *pattern) match(s string) bool {
	if p.literal {
		return s == p.src
	}
	if !strings.HasPrefix(s, p.prefix) {
		return false
	}
	if p.prefixStar {
		return true
	}
	return matchTokens(p.toks, s)
}

// matchTokens is the classic linear-backtracking glob matcher: on a mismatch
// it retries from the last '*' consuming one more character.
func matchTokens(toks []token, s string) bool {
	ti, si := 0, 0
	starTi, starSi := -1, 0
	for si < len(s) || ti < len(toks) {
		if ti < len(toks) {
			t := &toks[ti]
			if t.kind == tStar {
				starTi, starSi = ti, si
				ti++
				continue
			}
			if si < len(s) {
				r, size := utf8.DecodeRuneInString(s[si:])
				if t.matchRune(r) {
					ti++
					si += size
					continue
				}
			}
		}
		if starTi >= 0 && starSi < len(s) {
			_, size := utf8.DecodeRuneInString(s[starSi:])
			starSi += size
			ti, si = starTi+1, starSi
			continue
		}
		return false
	}
	return true
}
