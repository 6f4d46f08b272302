package version

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestFromBuildInfo(t *testing.T) {
	stamped := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Main:      debug.Module{Path: "github.com/listenerd/listenerd", Version: "v1.2.0"},
		Settings: []debug.BuildSetting{
			{Key: "-buildmode", Value: "exe"},
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
			{Key: "vcs.time", Value: "2026-01-02T03:04:05Z"},
			{Key: "vcs.modified", Value: "false"},
		},
	}
	for _, tc := range []struct {
		name string
		bi   *debug.BuildInfo
		want Info
		str  string
	}{
		{"tagged", stamped,
			Info{Version: "v1.2.0", Revision: "0123456789abcdef0123456789abcdef01234567", Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), GoVersion: "go1.26.8"},
			"v1.2.0 (revision 0123456789ab, 2026-01-02T03:04:05Z) go1.26.8"},
		{"modified", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.0.0-20260102030405-0123456789ab+dirty"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789ab"}, {Key: "vcs.modified", Value: "true"}}},
			Info{Version: "v0.0.0-20260102030405-0123456789ab+dirty", Revision: "0123456789ab", Dirty: true, GoVersion: "go1.26.8"},
			"v0.0.0-20260102030405-0123456789ab+dirty (revision 0123456789ab, dirty) go1.26.8"},
		{"dirty by the version only", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.0.1-0.20260102030405-0123456789ab+dirty"}},
			Info{Version: "v1.0.1-0.20260102030405-0123456789ab+dirty", Dirty: true, GoVersion: "go1.26.8"},
			"v1.0.1-0.20260102030405-0123456789ab+dirty (dirty) go1.26.8"},
		{"unstamped", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}},
			Info{Version: Devel, GoVersion: "go1.26.8"}, "(devel) go1.26.8"},
		{"unreadable time", &debug.BuildInfo{GoVersion: "go1.26.8", Settings: []debug.BuildSetting{{Key: "vcs.time", Value: "yesterday"}}},
			Info{Version: Devel, GoVersion: "go1.26.8"}, "(devel) go1.26.8"},
		{"no build info", nil, Info{Version: Devel, GoVersion: "unknown"}, "(devel) unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := FromBuildInfo(tc.bi)
			if got != tc.want {
				t.Errorf("FromBuildInfo = %+v, want %+v", got, tc.want)
			}
			if s := got.String(); s != tc.str {
				t.Errorf("String = %q, want %q", s, tc.str)
			}
		})
	}
}

// The test binary has build information: its Go version is this one.
func TestGet(t *testing.T) {
	if got := Get(); got.GoVersion != runtime.Version() || got.Version == "" {
		t.Errorf("Get = %+v, want Go %s", got, runtime.Version())
	}
}
