//go:build unix

package ctl

import (
	"os"
	"syscall"
)

// killGroup kills p's process group.
func killGroup(p *os.Process) { _ = syscall.Kill(-p.Pid, syscall.SIGKILL) }
