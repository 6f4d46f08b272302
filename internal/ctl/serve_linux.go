package ctl

import "syscall"

// childProcAttr puts a command of ctl serve in a process group of its own:
// a Ctrl-C at the terminal reaches ctl alone, which lets the commands
// finish (--grace), and a kill takes what the command started too. The
// command is killed if ctl dies: a command holding a handed-over socket
// would otherwise keep it open after its handler has gone.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
