package krules

import (
	"errors"
	"fmt"

	"github.com/krules-go/krules/storage"
)

// Errors returned by krules. Test them with errors.Is; messages add the
// subject and property concerned.
var (
	// ErrNotFound: the property (or extended property) does not exist.
	ErrNotFound = storage.ErrNotFound
	// ErrConflict: an update function lost against concurrent writers more
	// times than the backend retries; nothing was written.
	ErrConflict = storage.ErrConflict
	// ErrInvalidValue: a value outside the data model (see package storage),
	// or a built-in operation applied to a stored value of the wrong type, or
	// a stored value that cannot be converted to the type GetAs asked for.
	// Nothing was written.
	ErrInvalidValue = storage.ErrInvalidValue
	// ErrInvalidName: an empty (or non-UTF-8, or NUL-containing) subject,
	// property or event-type name. Nothing was written.
	ErrInvalidName = storage.ErrInvalidName
	// ErrCascadeDepth: an emit nested deeper than the App's cascade limit
	// (see WithCascadeLimit), usually a handler loop. The event was not
	// dispatched and, for Set/Delete/Flush, nothing was written.
	ErrCascadeDepth = errors.New("cascade depth limit exceeded")
)

// PanicError is the error a handler, filter or middleware panic is turned
// into. It reaches the App's error handler; Stack is the goroutine's stack at
// the panic.
type PanicError struct {
	Value any
	Stack []byte
}

// Error implements error.
func (p *PanicError) Error() string { return fmt.Sprintf("panic: %v", p.Value) }

// Unwrap returns the panic value when it is an error.
func (p *PanicError) Unwrap() error {
	if err, ok := p.Value.(error); ok {
		return err
	}
	return nil
}
