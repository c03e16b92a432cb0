package redis_test

import (
	"testing"

	"github.com/krules-go/krules/storage/redis"
)

func TestIdempotencyRecordKeySlot(t *testing.T) {
	// The CRC16 of the Redis Cluster specification.
	if got := redis.KeySlot("123456789"); got != 0x31C3%16384 {
		t.Fatalf("KeySlot(123456789) = %d, want %d", got, 0x31C3%16384)
	}
	if redis.KeySlot("{user1000}.following") != redis.KeySlot("user1000") {
		t.Fatal("hash tag not honoured")
	}
	for _, subj := range []string{"s:plain", "s:{tag}x", "s:a}b{", "s:{}x}", "s:{", "s:}{x}"} {
		rk := redis.RecordKey(subj, "k")
		if redis.KeySlot(rk) != redis.KeySlot(subj) {
			t.Errorf("record key %q is in slot %d, its subject %q in %d", rk, redis.KeySlot(rk), subj, redis.KeySlot(subj))
		}
	}
	if redis.RecordKey("s:{a}", "k") == redis.RecordKey("s:{a}x", "k") {
		t.Error("two subjects share a record key")
	}
}
