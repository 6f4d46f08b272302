// Package version says which build of listenerd or ctl is running, from
// the build information the Go toolchain embeds: the main module's
// version, the VCS revision, its time and whether the tree was modified,
// and the Go version.
package version

import (
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"time"
)

// Info is one build's identity.
type Info struct {
	Version   string    // the main module's version: a tag, a pseudo-version, or "(devel)"
	Revision  string    // the VCS revision (vcs.revision); "" when not stamped
	Time      time.Time // the revision's commit time (vcs.time); zero when not stamped
	Dirty     bool      // the tree had changes not committed (vcs.modified)
	GoVersion string    // the Go toolchain that built it
}

// Devel is the version of a build with no module version (go build in a
// checkout, with VCS stamping off).
const Devel = "(devel)"

// FromBuildInfo reads a build's identity from its build information; nil
// gives a development build of unknown Go version.
func FromBuildInfo(bi *debug.BuildInfo) Info {
	info := Info{Version: Devel, GoVersion: "unknown"}
	if bi == nil {
		return info
	}
	if v := bi.Main.Version; v != "" {
		info.Version = v
	}
	if bi.GoVersion != "" {
		info.GoVersion = bi.GoVersion
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.time":
			info.Time, _ = time.Parse(time.RFC3339, s.Value) // zero if unreadable
		case "vcs.modified":
			info.Dirty = s.Value == "true"
		}
	}
	// A build from a modified tree has a version ending +dirty (Go 1.24):
	// the flag, whichever told it.
	if strings.HasSuffix(info.Version, "+dirty") {
		info.Dirty = true
	}
	return info
}

// Get is this binary's identity.
var Get = sync.OnceValue(func() Info {
	bi, _ := debug.ReadBuildInfo()
	return FromBuildInfo(bi)
})

// ShortRevision is the revision's first 12 characters.
func (i Info) ShortRevision() string {
	return i.Revision[:min(len(i.Revision), 12)]
}

// String is the one line --version prints: "v1.2.0 (revision 0123456789ab,
// 2026-01-02T03:04:05Z, dirty) go1.26.8".
func (i Info) String() string {
	var b strings.Builder
	b.WriteString(i.Version)
	var notes []string
	if i.Revision != "" {
		notes = append(notes, "revision "+i.ShortRevision())
	}
	if !i.Time.IsZero() {
		notes = append(notes, i.Time.UTC().Format(time.RFC3339))
	}
	if i.Dirty {
		notes = append(notes, "dirty")
	}
	if len(notes) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(notes, ", "))
	}
	b.WriteString(" " + i.GoVersion)
	return b.String()
}
