package redis_test

import (
	"context"
	"fmt"
	"log"

	goredis "github.com/redis/go-redis/v9"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage/redis"
)

// Open a backend from a URL and count logins atomically across processes.
func ExampleOpen() {
	ctx := context.Background()
	backend, err := redis.Open(ctx, "redis://127.0.0.1:6379/0", redis.Config{Prefix: "myapp:"})
	if err != nil {
		log.Fatal(err)
	}
	defer backend.Close()

	app := krules.New(krules.WithStorage(backend))
	user := app.Subject("user-123", krules.NoCache())
	n, _, err := user.Set(ctx, "logins", krules.Inc(1)) // HASH s:myapp:user-123, field "plogins"
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("logins:", n)
}

// Use a Redis Cluster client you own; Close leaves it open.
func ExampleNew() {
	client := goredis.NewClusterClient(&goredis.ClusterOptions{
		Addrs:                 []string{"10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"},
		ContextTimeoutEnabled: true, // context deadlines bound network waits
	})
	defer client.Close()

	backend := redis.New(client, redis.Config{Prefix: "myapp:", MaxRetries: 20})
	defer backend.Close()
	app := krules.New(krules.WithStorage(backend))
	_ = app
}
