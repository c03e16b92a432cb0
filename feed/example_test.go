package feed_test

import (
	"fmt"
	"sort"
	"time"

	"github.com/krules-go/krules/feed"
	"github.com/krules-go/krules/storage"
)

// The CloudEvent a relay publishes for a change record: the krules
// built-in event, with the record id as event id (and Nats-Msg-Id), and
// the version, depth and Extra as extensions.
func ExampleEvent() {
	c := storage.Change{
		ID: "5f0c2b7e9d1a4c3b00000000000000a1", Type: storage.ChangePropertyChanged,
		Subject: "user-1", Property: "status", Old: "new", New: "active",
		Extra: map[string]any{"by": "api"}, Seq: 7, Depth: 1,
		Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}
	e, err := feed.Event(c, "writer-1")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(e.Type(), e.Subject(), e.ID())
	fmt.Println(string(e.Data()))
	ext := e.Extensions()
	names := make([]string, 0, len(ext))
	for k := range ext {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Printf("%s=%v\n", k, ext[k])
	}
	// Output:
	// subject-property-changed user-1 5f0c2b7e9d1a4c3b00000000000000a1
	// {"old_value":"new","property_name":"status","value":"active"}
	// krulesdepth=1
	// krulesextra={"by":"api"}
	// krulesseq=7
	// originid=5f0c2b7e9d1a4c3b00000000000000a1
	// propertyname=status
}
