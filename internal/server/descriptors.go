package server

import "syscall"

// minFDReserve is the smallest default reserve of descriptors kept from
// the listeners: the daemon's own files and sockets, a TCP API's clients,
// a state save and a few ctl calls.
const minFDReserve = 32

// fdLimit returns the process's open-file limit: RLIMIT_NOFILE's soft
// limit, which Go's runtime raised to the hard one at start. 0: unknown
// or unlimited, and then listeners have no descriptor budget.
func fdLimit() int64 {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0
	}
	if cur := uint64(r.Cur); cur > 0 && cur < 1<<40 {
		return int64(cur)
	}
	return 0
}

// DefaultFDReserve is the number of descriptors kept by default for the
// API and the rest of the daemon, out of the listeners' reach: an eighth
// of the open-file limit, at least 32, at most half.
func DefaultFDReserve() int64 { return defaultFDReserve(fdLimit()) }

func defaultFDReserve(limit int64) int64 {
	return min(max(minFDReserve, limit/8), limit/2)
}

// descriptors returns the open-file limit and the reserve in force for
// reserve (0: the default).
func descriptors(reserve int64) (limit, kept int64) {
	limit = fdLimit()
	if reserve <= 0 {
		reserve = defaultFDReserve(limit)
	}
	return limit, reserve
}
