// Package paths holds the per-user default locations shared by the daemon
// and ctl, so that both agree with no flags set.
package paths

import (
	"os"
	"path/filepath"
	"strconv"
)

// SocketEnv names the environment variable that overrides the API socket
// path for both the daemon and ctl.
const SocketEnv = "LISTENERD_SOCKET"

// RuntimeDir is the per-user directory that holds the API socket:
// $XDG_RUNTIME_DIR/listenerd, else <tmp>/listenerd-<uid>.
func RuntimeDir() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "listenerd")
	}
	return filepath.Join(os.TempDir(), "listenerd-"+strconv.Itoa(os.Getuid()))
}

// DefaultSocket is the API socket path used when neither --socket nor
// $LISTENERD_SOCKET is set.
func DefaultSocket() string {
	if s := os.Getenv(SocketEnv); s != "" {
		return s
	}
	return filepath.Join(RuntimeDir(), "listenerd.sock")
}

// StateDir is the per-user directory that holds the daemon's persisted
// listener specs: $XDG_STATE_HOME/listenerd, else ~/.local/state/listenerd,
// else <tmp>/listenerd-<uid>-state.
func StateDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "listenerd")
	}
	if h, err := os.UserHomeDir(); err == nil && h != "" {
		return filepath.Join(h, ".local", "state", "listenerd")
	}
	return filepath.Join(os.TempDir(), "listenerd-"+strconv.Itoa(os.Getuid())+"-state")
}
