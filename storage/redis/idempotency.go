package redis

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/krules-go/krules/storage"
)

var _ storage.Idempotent = (*Backend)(nil)

// IdempotencyWindow implements storage.Idempotent: Config.IdempotencyWindow,
// or storage.DefaultIdempotencyWindow (24 hours).
//
// A keyed Set (plain value or Op) or Delete runs a variant of its Lua
// script that also reads and writes the key record, a string key next to
// the subject's hash ("{s:<prefix><subject>}:idem:<key>", in the hash's
// Cluster slot) written with SET NX PX in the same script: the record and
// the write are atomic. The record holds a fingerprint of the request
// (script, property, value or operation) and the script's reply.
func (b *Backend) IdempotencyWindow() time.Duration {
	if b.cfg.IdempotencyWindow > 0 {
		return b.cfg.IdempotencyWindow
	}
	return storage.DefaultIdempotencyWindow
}

// idemVariants maps the writing scripts that honour idempotency keys to
// their keyed variant; a keyed call of any other writing script (the
// compare-and-set of update functions) is refused.
var idemVariants = map[*script]*script{
	setScript:        newIdemScript(setScript.src, idemSetOK),
	deleteScript:     newIdemScript(deleteScript.src, idemDeleteOK),
	opScript:         newIdemScript(opScript.src, idemOpOK),
	feedSetScript:    newIdemScript(feedSetScript.src, idemSetOK),
	feedDeleteScript: newIdemScript(feedDeleteScript.src, idemDeleteOK),
	feedOpScript:     newIdemScript(feedOpScript.src, idemOpOK),
}

// Lua conditions on a writing script's reply r telling a write that
// happened (recorded under the key) from a failure (not recorded). The feed
// variants reply as the scripts they wrap.
const (
	idemSetOK    = `true`
	idemDeleteOK = `r ~= nil and r ~= false`
	idemOpOK     = `type(r) == 'table' and r[1] == 'ok'`
)

// newIdemScript wraps src: the last KEYS entry is the record key, the last
// two ARGV entries the fingerprint and the window in milliseconds; the body
// sees KEYS and ARGV without them. ok is a Lua condition on the body's
// reply r telling a successful write (recorded) from a failure (not).
//
// Reply: {'idem-replay', record} for a recorded key with the same
// fingerprint, {'idem-reused'} for another fingerprint, else the body's
// reply.
func newIdemScript(src, ok string) *script {
	return newScript(`
local ik = table.remove(KEYS)
local ttl = table.remove(ARGV)
local fp = table.remove(ARGV)
local rec = redis.call('GET', ik)
if rec then
  if string.sub(rec, 1, #fp + 1) ~= fp .. '\n' then return {'idem-reused'} end
  return {'idem-replay', string.sub(rec, #fp + 2)}
end
local function body()
` + src + `
end
local r = body()
if ` + ok + ` then
  local enc
  if r == nil or r == false then enc = 'n'
  elseif type(r) ~= 'table' then enc = 's' .. tostring(r)
  else
    local out = {}
    for i = 1, table.maxn(r) do
      if r[i] == nil then out[i] = false else out[i] = r[i] end
    end
    enc = 't' .. cjson.encode(out)
  end
  redis.call('SET', ik, fp .. '\n' .. enc, 'NX', 'PX', ttl)
end
return r
`)
}

// runWrite runs the writing script s for property k of subject: its feed
// variant when the backend writes change records for k (feed.go), and, when
// ctx carries an idempotency key, the keyed variant of that script. The
// fingerprint of a keyed call covers s and args only, not the feed's
// per-call record id, so a retry matches the first call.
func (b *Backend) runWrite(ctx context.Context, s *script, subject string, k storage.Key, args ...any) (any, error) {
	key := b.Key(subject)
	run, keys, extra, err := b.feedPlan(ctx, s, subject, k)
	if err != nil {
		return nil, err
	}
	if v, handled, err := b.runKeyed(ctx, s, run, key, keys, args, extra); handled {
		return v, err
	}
	if keys == nil {
		return s.run(ctx, b.client, true, key, args...)
	}
	return run.runKeys(ctx, b.client, true, keys, append(args, extra...)...)
}

// runKeyed runs the keyed variant of run (s, or its feed variant with keys
// and extra arguments) when ctx carries an idempotency key; handled is false
// without a key. A replay returns the recorded reply in the form go-redis
// gives a live one (a nil reply as goredis.Nil) and marks ctx replayed.
func (b *Backend) runKeyed(ctx context.Context, s, run *script, key string, keys []string, args, extra []any) (v any, handled bool, err error) {
	ikey, ok := storage.IdempotencyKeyFrom(ctx)
	if !ok {
		return nil, false, nil
	}
	variant := idemVariants[run]
	if variant == nil {
		return nil, true, fmt.Errorf("%w: update functions cannot be made idempotent", storage.ErrIdempotencyUnsupported)
	}
	h := sha1.New()
	h.Write([]byte(s.sha))
	for _, a := range args {
		str := fmt.Sprint(a)
		fmt.Fprintf(h, "\x00%d:%s", len(str), str)
	}
	fp := hex.EncodeToString(h.Sum(nil))
	ms := b.IdempotencyWindow().Milliseconds()
	if keys == nil {
		keys = []string{key}
	}
	full := make([]any, 0, 6+len(keys)+len(args)+len(extra))
	full = append(full, "evalsha", variant.sha, len(keys)+1)
	for _, k := range keys {
		full = append(full, k)
	}
	full = append(full, recordKey(key, ikey))
	full = append(full, args...)
	full = append(full, extra...)
	full = append(full, fp, strconv.FormatInt(max(ms, 1), 10))
	v, err = process(ctx, b.client, true, full)
	if err != nil && goredis.HasErrorPrefix(err, "NOSCRIPT") {
		full[0], full[1] = "eval", variant.src
		v, err = process(ctx, b.client, true, full)
	}
	if err != nil {
		return v, true, err
	}
	reply, _ := v.([]any)
	if len(reply) == 0 {
		return v, true, nil
	}
	switch reply[0] {
	case "idem-reused":
		return nil, true, fmt.Errorf("idempotency key %.64q: %w", ikey, storage.ErrIdempotencyKeyReused)
	case "idem-replay":
		rec, _ := reply[1].(string)
		v, err = decodeIdemRecord(rec)
		if err == nil || err == goredis.Nil {
			storage.MarkReplayed(ctx)
		}
		return v, true, err
	}
	return v, true, nil
}

// decodeIdemRecord turns a recorded reply back into go-redis's form.
func decodeIdemRecord(rec string) (any, error) {
	if rec == "" {
		return nil, fmt.Errorf("redis: empty idempotency record")
	}
	switch rec[0] {
	case 'n':
		return nil, goredis.Nil
	case 's':
		return rec[1:], nil
	case 't':
		var raw []any
		if err := json.Unmarshal([]byte(rec[1:]), &raw); err != nil {
			return nil, fmt.Errorf("redis: idempotency record: %w", err)
		}
		for i, x := range raw {
			if x == false {
				raw[i] = nil
			}
		}
		return raw, nil
	}
	return nil, fmt.Errorf("redis: unknown idempotency record %.20q", rec)
}

// recordKey names the record of idempotency key ikey for the subject hash
// subjectKey. It hashes to the hash's Cluster slot: through a hash tag of
// the subject key itself when it has no braces, else through a tag chosen
// for that slot.
func recordKey(subjectKey, ikey string) string {
	if !strings.ContainsAny(subjectKey, "{}") {
		return "{" + subjectKey + "}:idem:" + ikey
	}
	return "{" + slotTag(keySlot(subjectKey)) + "}:idem:" + strconv.Itoa(len(subjectKey)) + ":" + subjectKey + ":" + ikey
}

// keySlot is the Redis Cluster slot of key (CRC16 of the key or of its hash
// tag, mod 16384).
func keySlot(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return crc16(key) % 16384
}

func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

var (
	slotTagsOnce sync.Once
	slotTags     []string
)

// slotTag returns a short string (digits) whose slot is slot.
func slotTag(slot uint16) string {
	slotTagsOnce.Do(func() {
		slotTags = make([]string, 16384)
		left := len(slotTags)
		for i := 0; left > 0; i++ {
			s := strconv.Itoa(i)
			if n := crc16(s) % 16384; slotTags[n] == "" {
				slotTags[n] = s
				left--
			}
		}
	})
	return slotTags[slot]
}
