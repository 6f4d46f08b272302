//go:build unix && !linux

package ctl

import "syscall"

// childProcAttr puts a command of ctl serve in a process group of its own:
// a Ctrl-C at the terminal reaches ctl alone, which lets the commands
// finish (--grace), and a kill takes what the command started too.
func childProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
