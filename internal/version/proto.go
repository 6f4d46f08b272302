package version

import (
	"google.golang.org/protobuf/types/known/timestamppb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// Proto is the build as the API reports it.
func (i Info) Proto() *listenerdv1.BuildInfo {
	b := &listenerdv1.BuildInfo{Version: i.Version, Revision: i.Revision, Dirty: i.Dirty, GoVersion: i.GoVersion}
	if !i.Time.IsZero() {
		b.RevisionTime = timestamppb.New(i.Time)
	}
	return b
}

// FromProto is the build the API reported; nil gives an empty Info.
func FromProto(b *listenerdv1.BuildInfo) Info {
	i := Info{Version: b.GetVersion(), Revision: b.GetRevision(), Dirty: b.GetDirty(), GoVersion: b.GetGoVersion()}
	if b.GetRevisionTime() != nil {
		i.Time = b.GetRevisionTime().AsTime()
	}
	return i
}
