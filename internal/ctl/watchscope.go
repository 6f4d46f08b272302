package ctl

import (
	"context"
	"regexp"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// idLike matches a listener id, as the daemon shapes them; anything else
// ctl watch is given is a name. (The daemon refuses names of this shape.)
var idLike = regexp.MustCompile(`^ln-[0-9a-f]{8}$`)

// watchScope is what ctl watch IDs… prints, and when it ends.
//
// Ids are the daemon's to filter. A name follows the name: when its
// listener closes and a new one takes the name (a new id), the new one's
// events follow. The daemon resolves a name once, when the watch begins,
// so a watch by name asks for every listener's events and keeps here
// those of the ids the name has had (from listener_started events, which
// carry the name).
//
// A watch of ids only ends when each of them has closed (its
// listener_closed event printed), unless keep.
type watchScope struct {
	names map[string]bool // the names asked for
	ids   map[string]bool // ids asked for, and every id a name asked for has had
	// open are the ids asked for by id that have not closed; the watch
	// ends when the last one closes. nil when the watch does not end so.
	open map[string]bool
	// added are the kinds the scope asked the daemon for and --kind did
	// not (listener_started, listener_closed): not printed.
	added []listenerdv1.EventKind
}

// newWatchScope sorts the watch's arguments into ids and names and
// adjusts req: for names, no listener filter at the daemon, and the kinds
// the scope needs.
func newWatchScope(args []string, keep bool, req *listenerdv1.WatchEventsRequest) *watchScope {
	s := &watchScope{names: map[string]bool{}, ids: map[string]bool{}}
	for _, a := range args {
		if idLike.MatchString(a) {
			s.ids[a] = true
		} else {
			s.names[a] = true
		}
	}
	if len(s.names) > 0 {
		req.ListenerIds = nil
		s.need(req, listenerdv1.EventKind_EVENT_KIND_LISTENER_STARTED)
	} else if len(s.ids) > 0 && !keep {
		s.open = make(map[string]bool, len(s.ids))
		for id := range s.ids {
			s.open[id] = true
		}
		s.need(req, listenerdv1.EventKind_EVENT_KIND_LISTENER_CLOSED)
	}
	return s
}

// need adds kind to the kinds the daemon sends, when they are filtered.
func (s *watchScope) need(req *listenerdv1.WatchEventsRequest, kind listenerdv1.EventKind) {
	if len(req.Kinds) > 0 && !slices.Contains(req.Kinds, kind) {
		req.Kinds = append(slices.Clip(req.Kinds), kind)
		s.added = append(s.added, kind)
	}
}

// resolve maps the names to the ids of their listeners now. A name that
// no listener has is NOT_FOUND, as the daemon answers for a watch by name,
// unless missingOK (after a restart, when a name may be gone).
func (s *watchScope) resolve(ctx context.Context, a *app, client listenerdv1.ListenerServiceClient, missingOK bool) error {
	for name := range s.names {
		uctx, cancel := a.unary(ctx)
		resp, err := client.GetListener(uctx, &listenerdv1.GetListenerRequest{Id: name})
		cancel()
		if st, ok := grpcStatus(err); ok && st.Code() == codes.NotFound && missingOK {
			continue
		}
		if err != nil {
			return err
		}
		s.ids[resp.GetListener().GetId()] = true
	}
	return nil
}

// take says whether ev is printed, and whether the watch is over after it.
func (s *watchScope) take(ev *listenerdv1.Event) (show, done bool) {
	id := ev.GetListenerId()
	if st := ev.GetListenerStarted(); st != nil && s.names[st.GetName()] {
		s.ids[id] = true // a listener took a name we follow
	}
	if len(s.names) > 0 && !s.ids[id] {
		return false, false // the daemon sends every listener's events
	}
	show = len(s.added) == 0 || !slices.Contains(s.added, eventKind(ev))
	if ev.GetListenerClosed() != nil && s.open[id] {
		delete(s.open, id)
		done = len(s.open) == 0
	}
	return show, done
}

// eventKind is the EventKind of ev's kind: its oneof field's name,
// upper-cased, after EVENT_KIND_ (listener_started:
// EVENT_KIND_LISTENER_STARTED).
func eventKind(ev *listenerdv1.Event) listenerdv1.EventKind {
	m := ev.ProtoReflect()
	fd := m.WhichOneof(m.Descriptor().Oneofs().ByName("kind"))
	if fd == nil {
		return listenerdv1.EventKind_EVENT_KIND_UNSPECIFIED
	}
	return listenerdv1.EventKind(listenerdv1.EventKind_value["EVENT_KIND_"+strings.ToUpper(string(fd.Name()))])
}
