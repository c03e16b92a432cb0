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

// RawFeedPut appends raw as a change record to the feed bucket (a record
// this package did not write).
func RawFeedPut(b *Backend, raw []byte) error {
	return b.update(func(bk subjects) error {
		fb, err := bk.tx.CreateBucketIfNotExists(feedBucket)
		if err != nil {
			return err
		}
		n, err := fb.NextSequence()
		if err != nil {
			return err
		}
		key := make([]byte, 8)
		for i := 7; i >= 0; i-- {
			key[i] = byte(n)
			n >>= 8
		}
		return fb.Put(key, raw)
	})
}
