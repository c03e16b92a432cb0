package main

import "syscall"

// childAttr makes a child process die with the bench (SIGKILL when the
// parent dies), besides its exit on stdin EOF.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
