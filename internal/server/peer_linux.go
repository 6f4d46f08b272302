package server

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/listenerd/listenerd/internal/listener"
)

// peerOf names the process that listens at the other end of c: its pid,
// command name and uid (SO_PEERCRED).
func peerOf(c *net.UnixConn) string {
	cred, err := listener.PeerCred(c)
	if err != nil || cred.Pid == 0 {
		return "a process"
	}
	name := "?"
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(int(cred.Pid)) + "/comm"); err == nil {
		name = strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("pid %d (%s, uid %d)", cred.Pid, name, cred.Uid)
}
