package main

import (
	"context"
	"fmt"
	"maps"

	"github.com/krules-go/krules"
	"github.com/krules-go/krules/storage/postgres"
	"github.com/krules-go/krules/storage/redis"
	"github.com/krules-go/krules/storage/storageurl"
)

// memoryStorage is "1. EmptySubjectStorage (in-memory)". Unlike the
// original's default, the Go in-memory store really keeps the data for the
// life of the process. KRULES_STORAGE may point the section at another store
// (see package storageurl).
func (nb *notebook) memoryStorage(ctx context.Context) error {
	o := nb.o
	url := nb.cfg.storageURL
	if url == "" {
		url = storageurl.DefaultURL
	}
	backend, err := storageurl.Open(ctx, url)
	if err != nil {
		return err
	}
	defer backend.Close()
	app := newApp(o, krules.WithStorage(backend))

	user := app.Subject("user-memory")
	if _, _, err := user.Set(ctx, "name", "John"); err != nil {
		return err
	}
	if _, _, err := user.Set(ctx, "email", "john@example.com"); err != nil {
		return err
	}
	if err := user.Store(ctx); err != nil {
		return err
	}
	// A new handle reads what the first one stored.
	again := app.Subject("user-memory")
	for _, p := range []struct{ label, prop string }{{"Name", "name"}, {"Email", "email"}} {
		v, err := again.Get(ctx, p.prop)
		if err != nil {
			return err
		}
		o.printf("%s: %s\n", p.label, pyStr(v))
	}
	if !backend.Capabilities().Persistent {
		o.println("\n⚠️  Data is in-memory only - lost when process ends")
	} else {
		o.printf("\n✓ Data persisted in %s\n", storageurl.Redact(url))
	}
	return nil
}

// redisStorage is "2. Redis Storage".
func (nb *notebook) redisStorage(ctx context.Context) error {
	o := nb.o
	if nb.cfg.redisURL == "" {
		o.println("⚠️  Redis section skipped: set KRULES_REDIS_URL (e.g. KRULES_REDIS_URL=redis://127.0.0.1:6379/0) to run it")
		return nil
	}
	backend, err := redis.Open(ctx, nb.cfg.redisURL, redis.Config{Prefix: nb.cfg.redisPrefix})
	if err != nil {
		return err
	}
	defer backend.Close()
	app := newApp(o, krules.WithStorage(backend))
	const name = "user-redis-123"
	// Start from an empty subject so every run prints the same facts.
	if err := app.Subject(name).Flush(ctx); err != nil {
		return err
	}

	o.println("=== Redis Storage Demo ===")
	o.println()

	// 1. Create and persist a subject.
	o.println("1. Creating new user...")
	user := app.Subject(name)
	if err := setAll(ctx, user, "name", "Alice", "email", "alice@example.com", "role", "admin", "login_count", 0); err != nil {
		return err
	}
	if err := user.Store(ctx); err != nil { // one atomic write to Redis
		return err
	}
	uname, err := user.Get(ctx, "name") // reloads from Redis
	if err != nil {
		return err
	}
	role, err := user.Get(ctx, "role")
	if err != nil {
		return err
	}
	o.printf("   ✓ User created: %s (%s)\n", pyStr(uname), pyStr(role))

	// 2. Load the subject in a new handle and modify it.
	o.println("\n2. Loading existing user and updating...")
	user2 := app.Subject(name)
	current, err := user2.Get(ctx, "name")
	if err != nil {
		return err
	}
	o.printf("   Loaded: %s\n", pyStr(current))
	if err := setAll(ctx, user2, "role", "superadmin", "last_login", now()); err != nil {
		return err
	}
	if err := user2.Store(ctx); err != nil {
		return err
	}
	role, err = user2.Get(ctx, "role")
	if err != nil {
		return err
	}
	o.printf("   ✓ Updated role to: %s\n", pyStr(role))

	// 3. Atomic increments: Inc runs in Redis (one script call), so
	// concurrent processes never lose a login.
	o.println("\n3. Atomic increment (simulating multiple logins)...")
	for range 5 {
		user3 := app.Subject(name)
		if _, _, err := user3.Set(ctx, "login_count", krules.Inc(1), krules.NoCache()); err != nil {
			return err
		}
	}
	count, err := app.Subject(name).Get(ctx, "login_count")
	if err != nil {
		return err
	}
	o.printf("   ✓ Login count after 5 increments: %s\n", py(count))

	// 4. The full state, from a new handle.
	o.println("\n4. Full state verification...")
	verify := app.Subject(name)
	data, err := pyDict(ctx, verify)
	if err != nil {
		return err
	}
	o.printf("   Complete state: %s\n", data)

	// 5. Atomic list append with a lambda: with NoCache it is an optimistic
	// compare-and-set in Redis, retried if another writer got in between
	// (so the function must have no side effects: the timestamp is taken
	// outside it).
	o.println("\n5. Atomic list append...")
	if _, _, err := verify.Set(ctx, "login_history", []any{}); err != nil {
		return err
	}
	if err := verify.Store(ctx); err != nil {
		return err
	}
	for range 3 {
		ts := now()
		tmp := app.Subject(name)
		if _, _, err := tmp.Set(ctx, "login_history", krules.Update(func(h []any) []any {
			return append(h, ts) // nil when missing
		}), krules.NoCache()); err != nil {
			return err
		}
	}
	history, err := app.Subject(name).Get(ctx, "login_history")
	if err != nil {
		return err
	}
	h, _ := history.([]any)
	o.printf("   ✓ Login history entries: %d\n", len(h))

	o.println("\n✓ Redis storage demo completed successfully!")
	return nil
}

// postgresStorage is "3. PostgreSQL Storage".
func (nb *notebook) postgresStorage(ctx context.Context) error {
	o := nb.o
	if nb.cfg.postgresURL == "" {
		o.println("⚠️  PostgreSQL section skipped: set KRULES_POSTGRES_URL (e.g. KRULES_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test?sslmode=disable) to run it")
		return nil
	}
	// The table and its indexes are created on first use.
	backend, err := postgres.Open(ctx, nb.cfg.postgresURL, postgres.Config{Table: nb.cfg.postgresTable})
	if err != nil {
		return err
	}
	defer backend.Close()
	app := newApp(o, krules.WithStorage(backend))
	const name = "employee-pg-456"
	if err := app.Subject(name).Flush(ctx); err != nil {
		return err
	}

	o.println("=== PostgreSQL Storage Demo ===")
	o.println()

	// 1. Create and persist a subject.
	o.println("1. Creating new employee...")
	employee := app.Subject(name)
	if err := setAll(ctx, employee,
		"name", "Bob Smith",
		"email", "bob@company.com",
		"department", "Engineering",
		"salary", 75000,
		"projects", []string{"project-A", "project-B"},
		"metadata", map[string]any{"level": "Senior", "location": "Remote"},
	); err != nil {
		return err
	}
	if err := employee.Store(ctx); err != nil { // one statement, one row
		return err
	}
	ename, err := employee.Get(ctx, "name")
	if err != nil {
		return err
	}
	o.printf("   ✓ Employee created: %s\n", pyStr(ename))

	// 2. Load the subject in a new handle and modify it.
	o.println("\n2. Loading existing employee and updating...")
	emp2 := app.Subject(name)
	dept, err := emp2.Get(ctx, "department")
	if err != nil {
		return err
	}
	o.printf("   Current department: %s\n", pyStr(dept))
	if err := setAll(ctx, emp2, "department", "Platform Engineering", "last_review", now()); err != nil {
		return err
	}
	if err := emp2.Store(ctx); err != nil {
		return err
	}
	dept, err = emp2.Get(ctx, "department")
	if err != nil {
		return err
	}
	o.printf("   ✓ Updated department to: %s\n", pyStr(dept))

	// 3. A typed update function; Set returns (new, old).
	o.println("\n3. Atomic salary increase (5% raise)...")
	emp3 := app.Subject(name)
	newSalary, oldSalary, err := emp3.Set(ctx, "salary", krules.Update(func(current int) int {
		return int(float64(current) * 1.05)
	}))
	if err != nil {
		return err
	}
	if err := emp3.Store(ctx); err != nil {
		return err
	}
	o.printf("   ✓ Salary: %s → %s\n", money(oldSalary), money(newSalary))

	// 4. Append runs as one SQL statement (NoCache: straight to the store).
	o.println("\n4. Adding projects atomically...")
	for _, project := range []string{"project-C", "project-D"} {
		tmp := app.Subject(name)
		if _, _, err := tmp.Set(ctx, "projects", krules.Append(project), krules.NoCache()); err != nil {
			return err
		}
	}
	projects, err := app.Subject(name).Get(ctx, "projects")
	if err != nil {
		return err
	}
	p, _ := projects.([]any)
	o.printf("   ✓ Total projects: %d - %s\n", len(p), py(projects))

	// 5. A lambda updating a nested object.
	o.println("\n5. Updating nested metadata...")
	meta := app.Subject(name)
	if _, _, err := meta.Set(ctx, "metadata", krules.Update(func(old map[string]any) map[string]any {
		m := maps.Clone(old)
		m["level"] = "Staff" // promotion!
		m["certifications"] = []any{"GCP", "GKE"}
		return m
	})); err != nil {
		return err
	}
	if err := meta.Store(ctx); err != nil {
		return err
	}
	metadata, err := meta.Get(ctx, "metadata")
	if err != nil {
		return err
	}
	o.printf("   ✓ Updated metadata: %s\n", py(metadata, "level", "location", "certifications"))

	// 6. Everything, read back through a new App on a new connection pool.
	o.println("\n6. Full state verification (new connection)...")
	backend2, err := postgres.Open(ctx, nb.cfg.postgresURL, postgres.Config{Table: nb.cfg.postgresTable})
	if err != nil {
		return err
	}
	defer backend2.Close()
	data, err := newApp(o, krules.WithStorage(backend2)).Subject(name).Dict(ctx)
	if err != nil {
		return err
	}
	o.printf("   Name: %s\n", pyStr(data["name"]))
	o.printf("   Department: %s\n", pyStr(data["department"]))
	o.printf("   Salary: %s\n", money(data["salary"]))
	dp, _ := data["projects"].([]any)
	o.printf("   Projects: %d active\n", len(dp))

	o.println("\n✓ PostgreSQL storage demo completed successfully!")
	return nil
}

// setAll sets name/value pairs in order.
func setAll(ctx context.Context, s *krules.Subject, kv ...any) error {
	for i := 0; i+1 < len(kv); i += 2 {
		prop, ok := kv[i].(string)
		if !ok {
			return fmt.Errorf("setAll: property name %v is not a string", kv[i])
		}
		if _, _, err := s.Set(ctx, prop, kv[i+1]); err != nil {
			return err
		}
	}
	return nil
}
