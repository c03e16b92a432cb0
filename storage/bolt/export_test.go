package bolt

import "github.com/krules-go/krules/storage"

// RawPut writes raw as the stored text of property k of subject, bypassing
// the value model (the conformance suite's storagetest.Config.RawPut).
func RawPut(b *Backend, subject string, k storage.Key, raw string) error {
	return b.update(func(bk subjects) error {
		r, err := decodeRecord(bk.Get([]byte(subject)))
		if err != nil {
			return err
		}
		r.put(kindIndex(k.Kind == storage.Extended), k.Name, []byte(raw))
		return bk.Put([]byte(subject), r.encode())
	})
}
