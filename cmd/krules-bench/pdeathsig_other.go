//go:build !linux

package main

import "syscall"

// childAttr: outside Linux a child relies on its stdin EOF to exit with the
// bench.
func childAttr() *syscall.SysProcAttr { return nil }
