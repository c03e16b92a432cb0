package storageurl

import (
	"context"
	"fmt"
)

// Placeholders until storage/redis and storage/postgres land.

func openRedis(ctx context.Context, sp spec) (Backend, error) {
	return nil, fmt.Errorf("storageurl: %s backend not available yet", sp.scheme)
}

func openPostgres(ctx context.Context, sp spec) (Backend, error) {
	return nil, fmt.Errorf("storageurl: %s backend not available yet", sp.scheme)
}
