// Package proc reads what the kernel says of a process, for the probes.
package proc

import (
	"fmt"
	"os"
	"strings"
)

// Memory is process pid's resident size and its peak, from
// /proc/PID/status: "VmRSS 105 MB (peak 110 MB)" as the kernel spells
// them; the error's text where there is no such file.
func Memory(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return err.Error()
	}
	var rss, hwm string
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			rss = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			hwm = strings.TrimSpace(v)
		}
	}
	return "VmRSS " + rss + " (peak " + hwm + ")"
}
