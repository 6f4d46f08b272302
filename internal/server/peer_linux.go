package server

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// peerOf names the process that listens at the other end of c: its pid,
// command name and uid (SO_PEERCRED).
func peerOf(c *net.UnixConn) string {
	rc, err := c.SyscallConn()
	if err != nil {
		return "a process"
	}
	var cred *unix.Ucred
	var gerr error
	if err := rc.Control(func(fd uintptr) { cred, gerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil || gerr != nil || cred.Pid == 0 {
		return "a process"
	}
	name := "?"
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(int(cred.Pid)) + "/comm"); err == nil {
		name = strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("pid %d (%s, uid %d)", cred.Pid, name, cred.Uid)
}
