package postgres

import (
	"regexp"
	"strings"

	"github.com/krules-go/krules/storage"
)

// queries holds the SQL text of every statement for one JSONB column
// (properties or ext_properties). Parameters: $1 subject name, $2 property
// name, $3 the new value or the operation's argument as JSON.
type queries struct {
	get       string
	set       string // plain value
	inc       string
	appendOp  string
	maxOp     string
	minOp     string
	del       string
	ensureRow string // Func path: create the row if missing
	lockGet   string // Func path: lock the row, read the property
	write     string // Func path: write the property in the locked row
	// blind are the one-UPDATE forms of the operations (blindTemplate),
	// indexed by storage.OpKind: no old value read back.
	blind [5]string
}

// blindTemplate applies an operation in one plain UPDATE of the subject's
// row and returns only the new value (Backend.SetBlind). {NV} and {OK} are
// the expressions of setTemplate with v, the stored property, read from
// the row being updated ({V}): under READ COMMITTED an UPDATE that finds
// the row changed by a concurrent transaction waits for it and evaluates
// SET and WHERE again on the latest version, so no increment is lost. When
// the row is missing or {OK} refuses the stored value, no row is updated
// and returned, and SetBlind runs the normal statement, which inserts the
// row or reports the error.
const blindTemplate = `UPDATE {T} AS s SET {C} = s.{C} || jsonb_build_object($2::text, {NV}), updated_at = NOW()
	WHERE s.subject_name = $1::text AND ({OK})
	RETURNING s.{C} -> $2::text`

// stored matches v, the stored property, in the operation expressions.
var stored = regexp.MustCompile(`\bv\b`)

// blindQuery expands blindTemplate for the expressions nv and ok over v.
func blindQuery(table, col, nv, ok string) string {
	v := "(s." + col + " -> $2::text)"
	return expand(blindTemplate, table, col, "{NV}", stored.ReplaceAllLiteralString(nv, v), "{OK}", stored.ReplaceAllLiteralString(ok, v))
}

// setTemplate writes one property in ONE statement and returns its old value:
//
//   - old locks the subject's row (FOR NO KEY UPDATE, no stronger than the
//     lock the UPDATE takes anyway). Under READ COMMITTED a row changed by a
//     concurrent transaction is waited for and re-read, so v is the latest
//     committed value and nobody can change it until we commit.
//   - up computes the new value from v ({NV}, the operation) and inserts the
//     row or merges {name: new} into the locked row. Its source joins old,
//     so the row is locked before anything is written. When the stored
//     value has the wrong type for the operation ({OK} false) the source is
//     empty and nothing is written. When old found no row but another
//     transaction inserted it after our snapshot (a concurrent first
//     write), the ON CONFLICT ... WHERE is false: nothing is written and the
//     caller retries with a fresh snapshot, so the old value returned is
//     never wrong.
//
// Result: the old value (SQL NULL when missing), {RET} (the new value for
// operations) and whether a row was written. Placeholders: {T} table, {C}
// column, {NV}/{OK} expressions over v (the stored jsonb, SQL NULL when
// missing) and $3 (the value or the operation's argument).
const setTemplate = `WITH old AS MATERIALIZED (
	SELECT {C} -> $2::text AS v FROM {T} WHERE subject_name = $1::text FOR NO KEY UPDATE
), up AS (
	INSERT INTO {T} AS s (subject_name, {C})
	SELECT $1::text, jsonb_build_object($2::text, {NV}) FROM (SELECT 1) AS one LEFT JOIN old ON true WHERE {OK}
	ON CONFLICT (subject_name) DO UPDATE
		SET {C} = s.{C} || EXCLUDED.{C}, updated_at = NOW()
		WHERE EXISTS (SELECT 1 FROM old)
	RETURNING {RET} AS r
)
SELECT (SELECT v FROM old), (SELECT r FROM up), EXISTS (SELECT 1 FROM up)`

// Expressions of the built-in operations over v (stored jsonb or NULL) and
// $3 (the argument). A missing property or a JSON null counts as absent.
//
// They run with the row locked, once per call, so they are written to do
// little: a simple CASE evaluates jsonb_typeof(v) once (NULL for a missing
// property, so it takes the ELSE branch), and the {NV} expressions rely on
// {OK} having passed (the WHERE of setTemplate, and of feedSetTemplate,
// which has the same INSERT ... SELECT, runs before the select list): a
// stored value of another type than the operation's is absent there.
const (
	arg     = `$3::jsonb`
	argNum  = `($3::jsonb)::numeric`
	incExpr = `CASE jsonb_typeof(v) WHEN 'number' THEN to_jsonb(v::numeric + ` + argNum + `) ELSE ` + arg + ` END`
	maxExpr = `CASE jsonb_typeof(v) WHEN 'number' THEN (CASE WHEN v::numeric >= ` + argNum + ` THEN v ELSE ` + arg + ` END) ELSE ` + arg + ` END`
	minExpr = `CASE jsonb_typeof(v) WHEN 'number' THEN (CASE WHEN v::numeric <= ` + argNum + ` THEN v ELSE ` + arg + ` END) ELSE ` + arg + ` END`
	appExpr = `CASE jsonb_typeof(v) WHEN 'array' THEN v || ` + arg + ` ELSE ` + arg + ` END`
	// okNull ends the CASE of an {OK}: a JSON null and a missing property
	// (jsonb_typeof NULL) pass, a value of any other type is refused.
	okNull = ` WHEN 'null' THEN true ELSE v IS NULL END`
	// numOK refuses a stored number beyond the float64 range (numeric holds
	// it; Go loads it as a storage.Invalid): nothing is written.
	numOK = `CASE jsonb_typeof(v) WHEN 'number' THEN abs(v::numeric) <= ` + maxFloat + okNull
	// arrOK leaves a stored list with more than 512 brackets to Go (it may
	// nest deeper than the value model allows): nothing is written, and
	// setStatement appends in a transaction instead.
	arrOK = `CASE jsonb_typeof(v) WHEN 'array' THEN length(v::text) - length(replace(replace(v::text, '[', ''), '{', '')) <= 512` + okNull
)

// incOK is the condition of Inc (see setTemplate's {OK}) over a stored
// number n = v and the argument a = $3, sum s = n + a (numeric, exact):
//
//   - s beyond float64 is refused (numeric has no such limit, but every
//     reader decodes numbers as float64): nothing is written, and Op.Apply
//     then reports ErrInvalidValue as on every other backend;
//   - an integer sum of two integers (integral and within int64, as the
//     value model reads them) outside the int64 range is refused (Op.Apply
//     reports storage.ErrOverflow), as every backend does.
//
// |s| <= MaxInt64 passes both at once, so the usual call evaluates one sum
// and one comparison; only a larger sum takes the full test (incSlow).
const (
	maxFloat = `1.7976931348623157e308`
	int64Min = `-9223372036854775808`
	int64Max = `9223372036854775807`
	incSum   = `(v::numeric + ` + argNum + `)`
	incSlow  = `abs(` + incSum + `) <= ` + maxFloat + ` AND NOT (` + isInt64V + ` AND ` + isInt64A + ` AND NOT (` + incSum + ` BETWEEN ` + int64Min + ` AND ` + int64Max + `))`
	isInt64V = `(v::numeric = trunc(v::numeric) AND v::numeric BETWEEN ` + int64Min + ` AND ` + int64Max + `)`
	isInt64A = `(` + argNum + ` = trunc(` + argNum + `) AND ` + argNum + ` BETWEEN ` + int64Min + ` AND ` + int64Max + `)`
	incOK    = `CASE jsonb_typeof(v) WHEN 'number' THEN (abs(` + incSum + `) <= ` + int64Max + ` OR (` + incSlow + `))` + okNull
)

// delTemplate removes one property in one statement and returns its old
// value; the row lock taken by old makes the returned value the one removed.
const delTemplate = `WITH old AS MATERIALIZED (
	SELECT {C} -> $2::text AS v FROM {T} WHERE subject_name = $1::text FOR NO KEY UPDATE
), up AS (
	UPDATE {T} SET {C} = {C} - $2::text, updated_at = NOW()
	WHERE subject_name = $1::text AND (SELECT v FROM old) IS NOT NULL
	RETURNING 1
)
SELECT (SELECT v FROM old), (SELECT count(*) FROM up)`

func expand(tmpl, table, col string, kv ...string) string {
	r := strings.NewReplacer(append([]string{"{T}", table, "{C}", col}, kv...)...)
	return r.Replace(tmpl)
}

func buildQueries(table, col string) queries {
	op := func(nv, ok string) string {
		return expand(setTemplate, table, col, "{NV}", nv, "{OK}", ok, "{RET}", "s."+col+" -> $2::text")
	}
	return queries{
		get:       expand(`SELECT {C} -> $2::text FROM {T} WHERE subject_name = $1::text`, table, col),
		set:       expand(setTemplate, table, col, "{NV}", arg, "{OK}", "true", "{RET}", "NULL::jsonb"),
		inc:       op(incExpr, incOK),
		appendOp:  op(appExpr, arrOK),
		maxOp:     op(maxExpr, numOK),
		minOp:     op(minExpr, numOK),
		del:       expand(delTemplate, table, col),
		ensureRow: expand(`INSERT INTO {T} (subject_name) VALUES ($1::text) ON CONFLICT (subject_name) DO NOTHING`, table, col),
		lockGet:   expand(`SELECT {C} -> $2::text FROM {T} WHERE subject_name = $1::text FOR NO KEY UPDATE`, table, col),
		write:     expand(`UPDATE {T} SET {C} = {C} || jsonb_build_object($2::text, $3::jsonb), updated_at = NOW() WHERE subject_name = $1::text`, table, col),
		blind: [...]string{
			storage.OpInc:    blindQuery(table, col, incExpr, incOK),
			storage.OpAppend: blindQuery(table, col, appExpr, arrOK),
			storage.OpMax:    blindQuery(table, col, maxExpr, numOK),
			storage.OpMin:    blindQuery(table, col, minExpr, numOK),
		},
	}
}

// tableQueries are the statements that touch both columns.
type tableQueries struct {
	load, ext, flush, store, storeDeletes, listFirst, listNext string
}

func buildTableQueries(table string) tableQueries {
	return tableQueries{
		load:         loadQuery(table),
		ext:          extQuery(table),
		flush:        flushQuery(table),
		store:        storeQuery(table),
		storeDeletes: storeDeletesQuery(table),
		listFirst:    listFirstQuery(table),
		listNext:     listNextQuery(table),
	}
}

func loadQuery(table string) string {
	return `SELECT properties, ext_properties FROM ` + table + ` WHERE subject_name = $1::text`
}

func extQuery(table string) string {
	return `SELECT ext_properties FROM ` + table + ` WHERE subject_name = $1::text`
}

func flushQuery(table string) string {
	return `DELETE FROM ` + table + ` WHERE subject_name = $1::text`
}

// storeQuery applies a batch with puts in one statement: deletes first
// ($4, $5: text[]), then the merge of the puts ($2, $3: JSON objects).
func storeQuery(table string) string {
	return `INSERT INTO ` + table + ` AS s (subject_name, properties, ext_properties)
	VALUES ($1::text, $2::jsonb, $3::jsonb)
	ON CONFLICT (subject_name) DO UPDATE SET
		properties = (s.properties - $4::text[]) || EXCLUDED.properties,
		ext_properties = (s.ext_properties - $5::text[]) || EXCLUDED.ext_properties,
		updated_at = NOW()`
}

// storeDeletesQuery applies a batch of deletes only: no row is created.
func storeDeletesQuery(table string) string {
	return `UPDATE ` + table + ` SET properties = properties - $2::text[],
		ext_properties = ext_properties - $3::text[], updated_at = NOW()
	WHERE subject_name = $1::text`
}

func listFirstQuery(table string) string {
	return `SELECT subject_name FROM ` + table + ` WHERE subject_name LIKE $1::text ESCAPE '\' ORDER BY subject_name LIMIT $2`
}

func listNextQuery(table string) string {
	return `SELECT subject_name FROM ` + table + ` WHERE subject_name LIKE $1::text ESCAPE '\' AND subject_name > $3::text ORDER BY subject_name LIMIT $2`
}

// escapeLike escapes the LIKE metacharacters of a literal prefix (ESCAPE '\').
func escapeLike(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}
