//go:build unix

package ctl

import (
	"os"
	"syscall"
)

// childProcAttr puts a command of ctl serve in a process group of its own:
// a Ctrl-C at the terminal reaches ctl alone, which lets the commands
// finish (--grace), and a kill takes what the command started too.
func childProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

// killGroup kills p's process group.
func killGroup(p *os.Process) { _ = syscall.Kill(-p.Pid, syscall.SIGKILL) }
