package events

import (
	"strconv"
	"strings"
)

// ConnID formats the daemon-wide id of connection n of a listener.
func ConnID(listener string, n uint64) string {
	var b [64]byte
	return string(AppendConnID(b[:0], listener, n))
}

// AppendConnID appends ConnID(listener, n) to dst.
func AppendConnID(dst []byte, listener string, n uint64) []byte {
	dst = append(dst, listener...)
	dst = append(dst, '.')
	return strconv.AppendUint(dst, n, 10)
}

// ParseConnID splits a connection id into its listener id and number.
func ParseConnID(id string) (listener string, n uint64, ok bool) {
	i := strings.LastIndexByte(id, '.')
	if i <= 0 {
		return "", 0, false
	}
	n, err := strconv.ParseUint(id[i+1:], 10, 64)
	if err != nil || n == 0 {
		return "", 0, false
	}
	return id[:i], n, true
}
