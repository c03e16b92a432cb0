package storageurl

import (
	"context"
	"fmt"

	goredis "github.com/redis/go-redis/v9"

	"github.com/krules-go/krules/storage/postgres"
	"github.com/krules-go/krules/storage/redis"
)

func openRedis(ctx context.Context, sp spec) (Backend, error) {
	// Parameters go-redis refuses (db number, unknown option, ...) are URL
	// errors, told apart from a server that cannot be reached.
	if _, err := goredis.ParseURL(sp.driverURL); err != nil {
		return nil, fmt.Errorf("storageurl: %w %s: %v", ErrBadURL, Redact(sp.driverURL), err)
	}
	b, err := redis.Open(ctx, sp.driverURL, redis.Config{Prefix: sp.prefix})
	if err != nil {
		return nil, fmt.Errorf("storageurl: %s: %w", Redact(sp.driverURL), err)
	}
	return b, nil
}

// pgBackend adapts postgres.Backend's Close (no error) to io.Closer;
// embedding keeps List and the other methods.
type pgBackend struct{ *postgres.Backend }

func (b pgBackend) Close() error {
	b.Backend.Close()
	return nil
}

func openPostgres(ctx context.Context, sp spec) (Backend, error) {
	if _, err := postgres.PoolConfig(sp.driverURL); err != nil {
		return nil, fmt.Errorf("storageurl: %w %s: %v", ErrBadURL, Redact(sp.driverURL), err)
	}
	b, err := postgres.Open(ctx, sp.driverURL, postgres.Config{Table: sp.table, Schema: sp.schema})
	if err != nil {
		return nil, fmt.Errorf("storageurl: %s: %w", Redact(sp.driverURL), err)
	}
	return pgBackend{b}, nil
}
