//go:build !unix

package ctl

import (
	"os"
	"syscall"
)

// childProcAttr: no process groups here.
func childProcAttr() *syscall.SysProcAttr { return nil }

// killGroup kills p.
func killGroup(p *os.Process) { _ = p.Kill() }
