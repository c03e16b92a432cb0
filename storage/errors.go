package storage

import (
	"errors"
	"fmt"
)

// Sentinel errors shared by every backend. Backends wrap them with %w and add
// the subject and property to the message; test them with errors.Is.
var (
	// ErrNotFound reports that a property (or subject) does not exist.
	ErrNotFound = errors.New("not found")

	// ErrConflict reports that an update function could not be applied
	// because concurrent writers kept changing the value until the backend's
	// retry bound was exhausted. Nothing was written.
	ErrConflict = errors.New("conflict: too many concurrent updates")

	// ErrInvalidValue reports a value outside the data model (see the package
	// documentation), or a built-in operation applied to a stored value of the
	// wrong type. Nothing was written.
	ErrInvalidValue = errors.New("invalid value")

	// ErrOverflow reports an [OpInc] of a stored integer by an integer whose
	// exact sum is outside the int64 range, on every backend and in every
	// mode (cached, NoCache, server-side scripts). It wraps ErrInvalidValue.
	// Nothing was written.
	ErrOverflow = fmt.Errorf("%w: integer overflow (the sum is outside the int64 range)", ErrInvalidValue)

	// ErrInvalidName reports an empty subject, property or event-type name,
	// or one that is longer than MaxNameLen bytes, is not valid UTF-8 or
	// contains a NUL byte. Nothing was written.
	ErrInvalidName = errors.New("invalid name")

	// ErrClosed reports a call on a backend after Close.
	ErrClosed = errors.New("backend closed")
)
