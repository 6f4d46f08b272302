package main

import "syscall"

// childAttr makes a child the bench starts die with the bench, so that a
// killed run leaves no daemon, server or load generator behind.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
