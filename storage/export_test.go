package storage

// Nesting exposes nesting to the external tests.
var Nesting = nesting
