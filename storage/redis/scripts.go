package redis

import (
	"context"
	"crypto/sha1"
	"encoding/hex"

	goredis "github.com/redis/go-redis/v9"
)

// script is a Lua script run with EVALSHA, falling back to EVAL (which also
// loads it) when the server does not know it yet: after a restart, on a new
// cluster node, or after SCRIPT FLUSH.
type script struct {
	src string
	sha string
	// shaArg and srcArg are sha and src boxed once, so that building a
	// call's argument list does not allocate them again.
	shaArg, srcArg any
}

func newScript(src string) *script {
	h := sha1.Sum([]byte(src))
	sha := hex.EncodeToString(h[:])
	return &script{src: src, sha: sha, shaArg: sha, srcArg: src}
}

// noRetryCmd is a command go-redis must not send a second time after a
// network error: a script that writes is not idempotent (an increment could
// be applied twice, an update function's compare-and-set would see its own
// write as a conflict). The error is returned to the caller instead.
type noRetryCmd struct{ *goredis.Cmd }

// NoRetry tells go-redis not to retry the command.
func (noRetryCmd) NoRetry() bool { return true }

// run executes s on the single key with args. Writing scripts (write true)
// are never retried by go-redis after a network error. (EVALSHA_RO is not
// used for reading scripts: it needs Redis 7, and Python KRules users may
// run older servers.)
func (s *script) run(ctx context.Context, c goredis.UniversalClient, write bool, key string, args ...any) (any, error) {
	full := make([]any, 0, 4+len(args))
	full = append(full, "evalsha", s.shaArg, 1, key)
	full = append(full, args...)
	v, err := process(ctx, c, write, full)
	if err != nil && goredis.HasErrorPrefix(err, "NOSCRIPT") {
		// Not executed: safe to send again with the source.
		full[0], full[1] = "eval", s.srcArg
		v, err = process(ctx, c, write, full)
	}
	return v, err
}

func process(ctx context.Context, c goredis.UniversalClient, write bool, args []any) (any, error) {
	cmd := goredis.NewCmd(ctx, args...)
	if write {
		_ = c.Process(ctx, noRetryCmd{cmd})
	} else {
		_ = c.Process(ctx, cmd)
	}
	return cmd.Result()
}

// Every script touches exactly one key (KEYS[1], the subject's hash), so it
// runs unchanged on Redis Cluster. Values are JSON text and are never decoded
// by cjson: Lua's cjson prints numbers with 14 significant digits.

// setScript writes ARGV[2] into field ARGV[1] and returns the previous text
// (nil when missing).
var setScript = newScript(`
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return old
`)

// deleteScript removes field ARGV[1] and returns its text (nil when missing).
var deleteScript = newScript(`
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then redis.call('HDEL', KEYS[1], ARGV[1]) end
return old
`)

// casScript writes ARGV[4] into field ARGV[1] when the field still holds the
// text ARGV[3] (ARGV[2] == '1') or is still missing (ARGV[2] == '0'), and
// returns 1. Otherwise it writes nothing and returns {current} (current is
// nil when the field is missing), so the caller retries without a new read.
var casScript = newScript(`
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
  if cur ~= ARGV[3] then return {cur} end
elseif cur then
  return {cur}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
return 1
`)

// extScript returns the extended fields (those starting with 'e') of the hash
// as a flat field/value array.
var extScript = newScript(`
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  if string.byte(all[i], 1) == 101 then
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  end
end
return out
`)

// opScript runs a built-in operation ARGV[2] ('inc', 'max', 'min',
// 'append') with the JSON argument ARGV[3] on field ARGV[1].
//
// Reply: {'ok', old, new} where old is nil for a missing property and new is
// the stored text (nil for 'append', whose result the caller computes from
// old), or {'type', description} when the stored value has the wrong type
// (nothing written), {'invalid', description} when the stored number is
// outside the value model (beyond the float64 range: nothing written), or
// {'range', x} when a float result overflows, {'overflow'} when an
// integer sum leaves the int64 range (nothing written), or {'check'} when an
// append's stored text holds 'N', 'I', the escape of NUL or more than 512
// brackets, so that it may be outside the value model (NaN, Infinity, NUL,
// nesting too deep): nothing is written, and the caller appends with read
// and compare-and-set, which refuses such a value.
//
// Numbers are handled as text: integer + integer goes through HINCRBY, exact
// over the whole int64 range; max and min of two integers compare the
// decimal strings exactly; other arithmetic uses Lua numbers (IEEE doubles,
// exact for integers up to 2^53) and prints the shortest text that reads back
// as the same double. append splices the JSON texts, never re-encoding the
// stored list.
var opScript = newScript(`
local key, field, op, arg = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local cur = redis.call('HGET', key, field)
if not cur or cur == 'null' then
  redis.call('HSET', key, field, arg)
  if op == 'append' then return {'ok', cur} end
  return {'ok', cur, arg}
end

local function kind(s)
  local c = string.sub(s, 1, 1)
  if c == '"' then return 'a string' end
  if c == '[' then return 'a list' end
  if c == '{' then return 'an object' end
  if c == 't' or c == 'f' then return 'a boolean' end
  return 'invalid JSON'
end

if op == 'append' then
  if string.sub(cur, 1, 1) ~= '[' then return {'type', kind(cur)} end
  -- NaN, Infinity, a NUL or nesting deeper than 512 may be in the stored
  -- list (text another program wrote): the caller decides in Go instead
  if string.find(cur, '[NI]') or string.find(cur, '\\u0000', 1, true)
    or select(2, string.gsub(cur, '[%[{]', '')) > 512 then
    return {'check'}
  end
  if arg == '[]' then return {'ok', cur} end
  local new
  if string.find(cur, '^%[%s*%]%s*$') then
    new = arg
  else
    local close = string.find(cur, '%]%s*$')
    if not close then return {'type', kind(cur)} end
    new = string.sub(cur, 1, close - 1) .. ',' .. string.sub(arg, 2)
  end
  redis.call('HSET', key, field, new)
  return {'ok', cur}
end

local function isint(s) return string.find(s, '^%-?%d+$') ~= nil end
if not string.find(cur, '^%-?%d') or not tonumber(cur) then
  return {'type', kind(cur)}
end
local n = tonumber(cur)
if n == math.huge or n == -math.huge then
  return {'invalid', 'a number beyond the float64 range'}
end

if op == 'inc' then
  if isint(cur) and isint(arg) then
    local r = redis.pcall('HINCRBY', key, field, arg)
    if type(r) == 'number' then
      return {'ok', cur, redis.call('HGET', key, field)}
    end
    -- both int64 and the sum is not: refused, nothing written
    if string.find(r.err, 'overflow', 1, true) then return {'overflow'} end
    -- not an int64: fall back to double arithmetic
  end
  local x = tonumber(cur) + tonumber(arg)
  if x ~= x or x == math.huge or x == -math.huge then return {'range', ''} end
  local s
  for p = 15, 17 do
    s = string.format('%.' .. p .. 'g', x)
    if tonumber(s) == x then break end
  end
  redis.call('HSET', key, field, s)
  return {'ok', cur, s}
end

-- max / min: keep the stored value on a tie
local c
if isint(cur) and isint(arg) then
  local na, nb = string.sub(cur, 1, 1) == '-', string.sub(arg, 1, 1) == '-'
  if na ~= nb then
    if na then c = -1 else c = 1 end
  else
    local a, b = cur, arg
    if na then a, b = string.sub(a, 2), string.sub(b, 2) end
    if #a ~= #b then
      if #a < #b then c = -1 else c = 1 end
    elseif a == b then c = 0
    elseif a < b then c = -1
    else c = 1 end
    if na then c = -c end
  end
else
  local a, b = tonumber(cur), tonumber(arg)
  if a < b then c = -1 elseif a > b then c = 1 else c = 0 end
end
if (op == 'max' and c >= 0) or (op == 'min' and c <= 0) then
  return {'ok', cur, cur}
end
redis.call('HSET', key, field, arg)
return {'ok', cur, arg}
`)
