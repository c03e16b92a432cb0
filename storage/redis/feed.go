package redis

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/krules-go/krules/storage"
)

// Change feed (Config.ChangeFeed). Every writing script of a default
// property has a feed variant: the original script runs unchanged inside a
// Lua function, and when the field's text differs before and after it, the
// script increments the subject's version (HINCRBY on the sequence hash)
// and appends a record to the feed stream (XADD), all in the one atomic
// script call. Stream entries hold flat fields:
//
//	_id  record id          _s  subject          _q  version (per subject)
//	_t   c changed | d deleted | f subject deleted
//	_p   hash field of the property ('p' or 'e' + name)
//	_o   old JSON text (absent: was missing)   _n  new JSON text
//	_m   JSON {"extra","depth","tp","ts"} (absent when empty)
//	p<name>, e<name>: the last content of a deleted subject (_t f)
//
// The record time is the stream entry id's millisecond timestamp.

var (
	_ storage.ChangeFeeder = (*Backend)(nil)
	_ storage.FeedStore    = (*Backend)(nil)
	_ storage.FeedCursor   = (*Backend)(nil)
)

// ChangeFeed implements storage.ChangeFeeder: Config.ChangeFeed.
func (b *Backend) ChangeFeed() bool { return b.cfg.ChangeFeed }

// FeedKey returns the name of the feed stream: "f:" + Config.Prefix +
// "changes". The per-subject versions live in the hash "f:" + Prefix +
// "seq" and the relay lease in "f:" + Prefix + "lease".
func (b *Backend) FeedKey() string { return b.feedKey }

func (b *Backend) seqKey() string   { return b.seqKeyName }
func (b *Backend) leaseKey() string { return "f:" + b.cfg.Prefix + "lease" }

// feedEpilogue appends a record for field ARGV[1] when its value changed
// (see sameLua);
// ARGV[#ARGV-2..#ARGV] are the record id, the subject and the metadata.
const feedEpilogue = `
local __f = ARGV[1]
local __after = redis.call('HGET', KEYS[1], __f)
if not __same(__before, __after) then
  local n = #ARGV
  local seq = string.format('%d', redis.call('HINCRBY', KEYS[3], ARGV[n - 1], '1'))
  local r = {'_id', ARGV[n - 2], '_s', ARGV[n - 1], '_q', seq, '_p', __f}
  if __after then
    r[#r + 1] = '_t'; r[#r + 1] = 'c'; r[#r + 1] = '_n'; r[#r + 1] = __after
  else
    r[#r + 1] = '_t'; r[#r + 1] = 'd'
  end
  if __before then r[#r + 1] = '_o'; r[#r + 1] = __before end
  if ARGV[n] ~= '' then r[#r + 1] = '_m'; r[#r + 1] = ARGV[n] end
  redis.call('XADD', KEYS[2], '*', unpack(r))
end
return __result
`

// withFeed wraps a single-field writing script (field ARGV[1]) into its feed
// variant.
func withFeed(s *script) *script {
	return newScript(sameLua + "local __before = redis.call('HGET', KEYS[1], ARGV[1])\nlocal function __body()\n" +
		s.src + "\nend\nlocal __result = __body()\n" + feedEpilogue)
}

// feedSetScript is the feed variant of setScript, written out (it is the
// hot path): one HGET for both the returned old text and the record.
// ARGV: field, text, record id, subject, metadata (may be left out when
// empty: every argument costs the server a Lua string and a table slot).
// Numbers handed to redis.call are text: Redis prints a Lua number with
// snprintf("%.17g"), several times the cost of string.format('%d').
var feedSetScript = newScript(sameLua + `
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if not __same(old, ARGV[2]) then
  local seq = string.format('%d', redis.call('HINCRBY', KEYS[3], ARGV[4], '1'))
  local m = ARGV[5]
  if old then
    if m and m ~= '' then
      redis.call('XADD', KEYS[2], '*', '_id', ARGV[3], '_s', ARGV[4], '_q', seq, '_p', ARGV[1], '_t', 'c', '_n', ARGV[2], '_o', old, '_m', m)
    else
      redis.call('XADD', KEYS[2], '*', '_id', ARGV[3], '_s', ARGV[4], '_q', seq, '_p', ARGV[1], '_t', 'c', '_n', ARGV[2], '_o', old)
    end
  elseif m and m ~= '' then
    redis.call('XADD', KEYS[2], '*', '_id', ARGV[3], '_s', ARGV[4], '_q', seq, '_p', ARGV[1], '_t', 'c', '_n', ARGV[2], '_m', m)
  else
    redis.call('XADD', KEYS[2], '*', '_id', ARGV[3], '_s', ARGV[4], '_q', seq, '_p', ARGV[1], '_t', 'c', '_n', ARGV[2])
  end
end
return old
`)

var (
	feedDeleteScript = withFeed(deleteScript)
	feedCasScript    = withFeed(casScript)
	feedOpScript     = withFeed(opScript)
)

// feedVariant maps a writing script to its feed variant.
var feedVariant = map[*script]*script{
	setScript: feedSetScript, deleteScript: feedDeleteScript, casScript: feedCasScript, opScript: feedOpScript,
}

// feedStoreScript applies a batch and records its effective changes of
// default properties. ARGV: id base, subject, metadata, #deletes,
// deletes..., #puts, (field, text)..., #per-field metadata, (field, meta
// or '!' for muted)... Returns the number of records.
var feedStoreScript = newScript(sameLua + `
local idb, subj, meta0 = ARGV[1], ARGV[2], ARGV[3]
local i = 4
local nd = tonumber(ARGV[i]); i = i + 1
local dels = {}
for j = 1, nd do dels[j] = ARGV[i]; i = i + 1 end
local np = tonumber(ARGV[i]); i = i + 1
local puts = {}
for j = 1, np do puts[#puts + 1] = ARGV[i]; puts[#puts + 1] = ARGV[i + 1]; i = i + 2 end
local nm = tonumber(ARGV[i]); i = i + 1
local meta = {}
for j = 1, nm do meta[ARGV[i]] = ARGV[i + 1]; i = i + 2 end
local order, seen, before = {}, {}, {}
local function touch(f)
  if string.byte(f, 1) == 112 and not seen[f] then
    seen[f] = true
    order[#order + 1] = f
    before[f] = redis.call('HGET', KEYS[1], f)
  end
end
for j = 1, #dels do touch(dels[j]) end
for j = 1, #puts, 2 do touch(puts[j]) end
if nd > 0 then redis.call('HDEL', KEYS[1], unpack(dels)) end
if np > 0 then redis.call('HSET', KEYS[1], unpack(puts)) end
local k = 0
for _, f in ipairs(order) do
  local m = meta[f] or meta0
  local after = redis.call('HGET', KEYS[1], f)
  if m ~= '!' and not __same(before[f], after) then
    k = k + 1
    local seq = string.format('%d', redis.call('HINCRBY', KEYS[3], subj, '1'))
    local r = {'_id', string.format('%s-%d', idb, k), '_s', subj, '_q', seq, '_p', f}
    if after then
      r[#r + 1] = '_t'; r[#r + 1] = 'c'; r[#r + 1] = '_n'; r[#r + 1] = after
    else
      r[#r + 1] = '_t'; r[#r + 1] = 'd'
    end
    if before[f] then r[#r + 1] = '_o'; r[#r + 1] = before[f] end
    if m ~= '' then r[#r + 1] = '_m'; r[#r + 1] = m end
    redis.call('XADD', KEYS[2], '*', unpack(r))
  end
end
return k
`)

// feedFlushScript deletes the subject and records one deletion per
// property (default first, then extended, sorted by name) and then the
// subject deletion with its last content. ARGV: id base, subject, metadata.
var feedFlushScript = newScript(`
local idb, subj, m = ARGV[1], ARGV[2], ARGV[3]
local all = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
local ps, es, val = {}, {}, {}
for i = 1, #all, 2 do
  local f = all[i]
  local c = string.byte(f, 1)
  if #f > 1 and (c == 112 or c == 101) then
    val[f] = all[i + 1]
    if c == 112 then ps[#ps + 1] = f else es[#es + 1] = f end
  end
end
table.sort(ps)
table.sort(es)
local k = 0
local function rec(r)
  k = k + 1
  local seq = string.format('%d', redis.call('HINCRBY', KEYS[3], subj, '1'))
  local head = {'_id', string.format('%s-%d', idb, k), '_s', subj, '_q', seq}
  for j = 1, #r do head[#head + 1] = r[j] end
  if m ~= '' then head[#head + 1] = '_m'; head[#head + 1] = m end
  redis.call('XADD', KEYS[2], '*', unpack(head))
end
for _, f in ipairs(ps) do rec({'_t', 'd', '_p', f, '_o', val[f]}) end
for _, f in ipairs(es) do rec({'_t', 'd', '_p', f, '_o', val[f]}) end
local snap = {'_t', 'f'}
for _, f in ipairs(ps) do snap[#snap + 1] = f; snap[#snap + 1] = val[f] end
for _, f in ipairs(es) do snap[#snap + 1] = f; snap[#snap + 1] = val[f] end
rec(snap)
return k
`)

// leaseScript acquires or renews the lease KEYS[1] for owner ARGV[1] for
// ARGV[2] milliseconds; 1 when owner holds it.
var leaseScript = newScript(`
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`)

var releaseScript = newScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
`)

// encodeMeta returns the _m text of m: "" when empty, "!" when muted, else
// the JSON object {"extra", "depth", "tp", "ts"} (keys only when set; a nil
// Extra is absent, an empty one stays empty).
func encodeMeta(m *storage.ChangeMeta) (string, error) {
	switch {
	case m == nil:
		return "", nil
	case m.Muted:
		return "!", nil
	case m.Extra == nil && m.Depth == 0 && m.TraceParent == "" && m.TraceState == "":
		return "", nil // what EncodeChangeMeta gives, without its map
	}
	data, err := storage.EncodeChangeMeta(m)
	return string(data), err
}

// feedPlan chooses how a writing script runs: its feed variant, with the
// extra keys and record arguments, when the feed is on, the property a
// default one and the write not muted; else s itself (keys nil).
func (b *Backend) feedPlan(ctx context.Context, s *script, subject string, k storage.Key) (run *script, keys []string, extra []any, err error) {
	if !b.cfg.ChangeFeed || k.Kind != storage.Default {
		return s, nil, nil, nil
	}
	meta, err := encodeMeta(storage.ChangeFrom(ctx))
	if err != nil {
		return nil, nil, nil, err
	}
	if meta == "!" {
		return s, nil, nil, nil
	}
	return feedVariant[s], []string{b.Key(subject), b.FeedKey(), b.seqKey()}, []any{storage.NewChangeID(), subject, meta}, nil
}

// feedSet is Set of a plain value in feed mode, without an idempotency
// key: feedSetScript, or setScript for a muted write. Its argument list is
// built in one piece (the hot path of a feed write).
func (b *Backend) feedSet(ctx context.Context, subject string, k storage.Key, text []byte) (any, error) {
	meta, err := encodeMeta(storage.ChangeFrom(ctx))
	if err != nil {
		return nil, err
	}
	key := b.Key(subject)
	if meta == "!" {
		return setScript.run(ctx, b.client, true, key, field(k), text)
	}
	full := []any{"evalsha", feedSetScript.shaArg, 3, key, b.feedKeyArg, b.seqKeyArg,
		field(k), text, storage.NewChangeID(), subject, meta}
	if meta == "" {
		full = full[:len(full)-1] // the script reads a missing ARGV[5] as ''
	}
	v, err := process(ctx, b.client, true, full)
	if err != nil && goredis.HasErrorPrefix(err, "NOSCRIPT") {
		full[0], full[1] = "eval", feedSetScript.srcArg
		v, err = process(ctx, b.client, true, full)
	}
	return v, err
}

// runKeys executes s with several keys (see run).
func (s *script) runKeys(ctx context.Context, c goredis.UniversalClient, write bool, keys []string, args ...any) (any, error) {
	full := make([]any, 0, 3+len(keys)+len(args))
	full = append(full, "evalsha", s.shaArg, len(keys))
	for _, k := range keys {
		full = append(full, k)
	}
	full = append(full, args...)
	v, err := process(ctx, c, write, full)
	if err != nil && goredis.HasErrorPrefix(err, "NOSCRIPT") {
		full[0], full[1] = "eval", s.srcArg
		v, err = process(ctx, c, write, full)
	}
	return v, err
}

// feedStore is Store in feed mode for a batch that touches default
// properties.
func (b *Backend) feedStore(ctx context.Context, subject string, dels []string, puts []any) error {
	m := storage.ChangeFrom(ctx)
	meta0, err := encodeMeta(m)
	if err != nil {
		return fmt.Errorf("redis: store subject %q: %w", subject, err)
	}
	args := make([]any, 0, 6+len(dels)+len(puts))
	args = append(args, storage.NewChangeID(), subject, meta0, len(dels))
	for _, d := range dels {
		args = append(args, d)
	}
	args = append(args, len(puts)/2)
	args = append(args, puts...)
	var pm []any
	if m != nil {
		for name, p := range m.Props {
			t, err := encodeMeta(p)
			if err != nil {
				return fmt.Errorf("redis: store subject %q: property %q: %w", subject, name, err)
			}
			pm = append(pm, "p"+name, t)
		}
	}
	args = append(args, len(pm)/2)
	args = append(args, pm...)
	if _, err := feedStoreScript.runKeys(ctx, b.client, true, []string{b.Key(subject), b.FeedKey(), b.seqKey()}, args...); err != nil {
		return fmt.Errorf("redis: store subject %q (%d deletes, %d puts): %w", subject, len(dels), len(puts)/2, err)
	}
	return nil
}

// feedFlush is Flush in feed mode.
func (b *Backend) feedFlush(ctx context.Context, subject string) error {
	meta, err := encodeMeta(storage.ChangeFrom(ctx))
	if err != nil {
		return fmt.Errorf("redis: flush subject %q: %w", subject, err)
	}
	if meta == "!" {
		meta = ""
	}
	if _, err := feedFlushScript.runKeys(ctx, b.client, true, []string{b.Key(subject), b.FeedKey(), b.seqKey()}, storage.NewChangeID(), subject, meta); err != nil {
		return fmt.Errorf("redis: flush subject %q: %w", subject, err)
	}
	return nil
}

// ReadChanges implements storage.FeedStore with XREAD from the start of the
// stream (published records are deleted), blocking up to wait (rounded up
// to a millisecond) when the stream is empty.
func (b *Backend) ReadChanges(ctx context.Context, n int, wait time.Duration) ([]storage.PendingChange, error) {
	return b.ReadChangesAfter(ctx, "", n, wait)
}

// ReadChangesAfter implements storage.FeedCursor with XREAD after the
// stream entry id after ("" for the start), blocking up to wait (rounded
// up to a millisecond) when no entry follows it. Stream ids increase in
// commit order (one script per write), so no record committed later can
// sort before after.
func (b *Backend) ReadChangesAfter(ctx context.Context, after string, n int, wait time.Duration) ([]storage.PendingChange, error) {
	if err := b.open(ctx); err != nil {
		return nil, err
	}
	if after == "" {
		after = "0-0"
	}
	block := time.Duration(-1)
	if wait > 0 {
		block = max(wait, time.Millisecond)
	}
	res, err := b.client.XRead(ctx, &goredis.XReadArgs{Streams: []string{b.FeedKey(), after}, Count: int64(max(n, 1)), Block: block}).Result()
	if errors.Is(err, goredis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("redis: read change feed: %w", err)
	}
	var out []storage.PendingChange
	for _, st := range res {
		if out == nil {
			out = make([]storage.PendingChange, 0, len(st.Messages))
		}
		for _, m := range st.Messages {
			c, err := decodeRecord(m)
			out = append(out, storage.PendingChange{Ref: m.ID, Change: c, Err: err})
		}
	}
	return out, nil
}

// decodeRecord turns a stream entry into a Change.
func decodeRecord(m goredis.XMessage) (storage.Change, error) {
	str := func(k string) (string, bool) {
		v, ok := m.Values[k].(string)
		return v, ok
	}
	var c storage.Change
	c.ID, _ = str("_id")
	c.Subject, _ = str("_s")
	if ms, _, ok := strings.Cut(m.ID, "-"); ok {
		if n, err := strconv.ParseInt(ms, 10, 64); err == nil {
			c.Time = time.UnixMilli(n).UTC()
		}
	}
	if c.ID == "" || c.Subject == "" {
		return c, fmt.Errorf("record %s: missing id or subject", m.ID)
	}
	q, _ := str("_q")
	seq, err := strconv.ParseInt(q, 10, 64)
	if err != nil {
		return c, fmt.Errorf("record %s: bad version %q", m.ID, q)
	}
	c.Seq = seq
	if mt, ok := str("_m"); ok {
		if err := storage.DecodeChangeMeta([]byte(mt), &c); err != nil {
			return c, fmt.Errorf("record %s: metadata: %v", m.ID, err)
		}
	}
	value := func(k string) (any, error) {
		t, ok := str(k)
		if !ok {
			return nil, nil
		}
		return storage.Unmarshal([]byte(t))
	}
	t, _ := str("_t")
	switch t {
	case "c", "d":
		f, _ := str("_p")
		if len(f) < 2 {
			return c, fmt.Errorf("record %s: bad property field %q", m.ID, f)
		}
		c.Property, c.Extended = f[1:], f[0] == 'e'
		if c.Old, err = value("_o"); err != nil {
			return c, fmt.Errorf("record %s: old value: %w", m.ID, err)
		}
		c.Type = storage.ChangePropertyDeleted
		if t == "c" {
			c.Type = storage.ChangePropertyChanged
			if c.New, err = value("_n"); err != nil {
				return c, fmt.Errorf("record %s: new value: %w", m.ID, err)
			}
		}
	case "f":
		c.Type = storage.ChangeSubjectDeleted
		c.Props, c.ExtProps = map[string]any{}, map[string]any{}
		names := make([]string, 0, len(m.Values))
		for k := range m.Values {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			if len(k) < 2 || (k[0] != 'p' && k[0] != 'e') {
				continue
			}
			v, err := value(k)
			if err != nil {
				return c, fmt.Errorf("record %s: property %q: %w", m.ID, k[1:], err)
			}
			if k[0] == 'p' {
				c.Props[k[1:]] = v
			} else {
				c.ExtProps[k[1:]] = v
			}
		}
	default:
		return c, fmt.Errorf("record %s: unknown type %q", m.ID, t)
	}
	return c, nil
}

// AckChanges implements storage.FeedStore with XDEL.
func (b *Backend) AckChanges(ctx context.Context, refs []string) error {
	if len(refs) == 0 {
		return nil
	}
	if err := b.open(ctx); err != nil {
		return err
	}
	if err := b.client.XDel(ctx, b.FeedKey(), refs...).Err(); err != nil {
		return fmt.Errorf("redis: remove %d change records: %w", len(refs), err)
	}
	return nil
}

// FeedLease implements storage.FeedStore: a key set with NX and a TTL,
// renewed by its owner (one script).
func (b *Backend) FeedLease(ctx context.Context, owner string, ttl time.Duration) (bool, error) {
	if err := b.open(ctx); err != nil {
		return false, err
	}
	res, err := leaseScript.run(ctx, b.client, false, b.leaseKey(), owner, max(ttl.Milliseconds(), 1))
	if err != nil {
		return false, fmt.Errorf("redis: change feed lease: %w", err)
	}
	n, _ := res.(int64)
	return n == 1, nil
}

// ReleaseFeedLease implements storage.FeedStore.
func (b *Backend) ReleaseFeedLease(ctx context.Context, owner string) error {
	if err := b.open(ctx); err != nil {
		return err
	}
	if _, err := releaseScript.run(ctx, b.client, false, b.leaseKey(), owner); err != nil {
		return fmt.Errorf("redis: release change feed lease: %w", err)
	}
	return nil
}
