package redis

import (
	"context"
	"errors"

	goredis "github.com/redis/go-redis/v9"

	"github.com/krules-go/krules/storage"
)

var _ storage.BlindOps = (*Backend)(nil)

// SetBlind implements storage.BlindOps. An Inc by an integer is one HINCRBY,
// which reads nothing back but the sum: Redis applies it to a field that
// holds the decimal text of an int64 (the JSON text of an integer, as
// Marshal and Python KRules write it) or is missing, and refuses every
// other stored text and a sum outside the int64 range with an error reply,
// writing nothing. On such a reply SetBlind runs the normal Inc (Set), so
// the result and the error are exactly Set's: a float or integral float
// text is added as Set adds it, a JSON null takes the argument, a string or
// list fails with ErrInvalidValue, an overflow with ErrOverflow. Other Ops,
// a float argument, an idempotency key in ctx and Config.ChangeFeed (the
// record needs the old value) go to Set, whose old value is dropped.
//
// HINCRBY is never sent twice by go-redis after a network error (it is not
// idempotent); such an error is returned as it is, and the increment may or
// may not have been applied.
func (b *Backend) SetBlind(ctx context.Context, subject string, k storage.Key, op *storage.Op) (any, error) {
	if err := b.check(ctx, k); err != nil {
		return nil, err
	}
	if n, ok := op.Arg.(int64); ok && op.Kind == storage.OpInc && !b.cfg.ChangeFeed {
		if _, keyed := storage.IdempotencyKeyFrom(ctx); !keyed {
			cmd := goredis.NewCmd(ctx, "hincrby", b.Key(subject), field(k), n)
			_ = b.client.Process(ctx, noRetryCmd{cmd})
			v, err := cmd.Int64()
			if err == nil {
				return v, nil
			}
			var rerr goredis.Error
			if !errors.As(err, &rerr) {
				return nil, propErr(op.Kind.String(), subject, k, err)
			}
			// An error reply: nothing was written; Set decides.
		}
	}
	nv, _, err := b.Set(ctx, subject, k, storage.Mutation{Op: op})
	return nv, err
}
