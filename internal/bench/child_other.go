//go:build !linux

package main

import "syscall"

// childAttr: only Linux can tie a child's life to its parent's. Elsewhere
// the bench stops its children itself, which a killed run cannot do.
func childAttr() *syscall.SysProcAttr { return nil }
