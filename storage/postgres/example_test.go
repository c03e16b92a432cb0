package postgres_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage/postgres"
)

// Example runs the salary scenario of the KRules showcase on PostgreSQL.
// It is compiled but not run by go test (it needs a server): run it with
// KRULES_POSTGRES_URL set from your own program.
func Example() {
	ctx := context.Background()
	backend, err := postgres.Open(ctx, os.Getenv("KRULES_POSTGRES_URL"), postgres.Config{Table: "showcase_subjects"})
	if err != nil {
		log.Fatal(err)
	}
	defer backend.Close()
	app := krules.New(krules.WithStorage(backend))

	emp := app.Subject("employee-42", krules.NoCache())
	if _, _, err := emp.Set(ctx, "salary", 75000); err != nil {
		log.Fatal(err)
	}
	newV, oldV, err := emp.Set(ctx, "salary", krules.Update(func(old float64) float64 { return old * 1.05 }))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(oldV, "->", newV) // 75000 -> 78750
	if _, _, err := emp.Set(ctx, "projects", krules.Append("alpha", "beta")); err != nil {
		log.Fatal(err)
	}
	if err := emp.Flush(ctx); err != nil {
		log.Fatal(err)
	}
}
