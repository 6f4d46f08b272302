package declare

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// Action is what a plan does to one listener.
type Action string

// The actions, in the order Apply carries them out.
const (
	// Close closes a listener the set no longer names.
	Close Action = "close"
	// Rebind replaces a listener whose change needs a new socket (host,
	// port, backlog) or cannot be made in place (handler, socket options,
	// ACLs): it is closed and created again under its name, with a new id.
	Rebind Action = "rebind"
	// Update changes a listener's limits in place (or only takes it as
	// declared).
	Update Action = "update"
	// Create creates a listener the set names and that does not exist.
	Create Action = "create"
	// Unchanged: the listener is as the set says.
	Unchanged Action = "unchanged"
	// Keep: a listener the set does not name, left alone (no prune).
	Keep Action = "keep"
)

// Change is one listener's step in a plan.
type Change struct {
	Action Action `json:"action"`
	Name   string `json:"name,omitempty"`
	// ID is the listener's id now (empty for a create).
	ID string `json:"id,omitempty"`
	// Diff says what changes, one item a field: "max_connections 10 ->
	// 100", "port 8080 -> 8081".
	Diff []string `json:"diff,omitempty"`
	// Note explains an action: why a rebind, why a keep.
	Note string `json:"note,omitempty"`
	// Spec is the spec wanted (create, update, rebind).
	Spec *listenerdv1.ListenerSpec `json:"-"`
	// Drain bounds the drain of a listener this change closes (close,
	// rebind).
	Drain time.Duration `json:"-"`
	// Limits: an update changes the limits (else it only takes the
	// listener as declared).
	Limits bool `json:"-"`
}

// String is the change as one line for people: "update web:
// max_connections 10 -> 100".
func (c Change) String() string {
	name := c.Name
	if name == "" {
		name = c.ID
	}
	s := string(c.Action) + " " + name
	if len(c.Diff) > 0 {
		s += ": " + strings.Join(c.Diff, ", ")
	}
	if c.Note != "" {
		s += " (" + c.Note + ")"
	}
	return s
}

// Options shape a plan.
type Options struct {
	// Prune closes the open listeners that the set does not name and that
	// Owned reports (nil: all of them). Without Prune they are left
	// alone: Keep changes, when Others asks for them.
	Prune bool
	Owned func(*listenerdv1.Listener) bool
	// Others lists the listeners left alone as Keep changes.
	Others bool
	// Adopt: a listener the set names that is not declared yet takes an
	// update (which declares it), even when its spec is as wanted.
	Adopt bool
}

// open reports whether a listener holds its name: listening or failed,
// not closing.
func open(l *listenerdv1.Listener) bool {
	switch l.GetStatus().GetState() {
	case listenerdv1.State_STATE_LISTENING, listenerdv1.State_STATE_FAILED:
		return true
	}
	return false
}

// Plan compares the listeners there are (as ListListeners returns them)
// with the set and returns the changes that make the set true: closes
// first, then rebinds, updates and creates, each by name; unchanged and
// kept listeners at the end.
func Plan(current []*listenerdv1.Listener, set *Set, opts Options) []Change {
	byName := map[string]*listenerdv1.Listener{}
	for _, l := range current {
		if open(l) && l.GetName() != "" {
			byName[l.GetName()] = l
		}
	}
	var out []Change
	named := map[string]bool{}
	for _, e := range set.Entries {
		named[e.Name] = true
		c := Change{Name: e.Name, Spec: e.Spec, Drain: e.Drain}
		cur := byName[e.Name]
		if cur == nil {
			c.Action = Create
			out = append(out, c)
			continue
		}
		c.ID = cur.GetId()
		rebind, limits := diffSpecs(cur.GetSpec(), e.Spec)
		switch {
		case len(rebind) > 0:
			c.Action, c.Diff = Rebind, append(rebind, limits...)
			c.Note = rebindNote(rebind)
		case cur.GetStatus().GetState() == listenerdv1.State_STATE_FAILED:
			c.Action, c.Diff = Rebind, limits
			c.Note = "failed: " + cur.GetStatus().GetLastError()
		case len(limits) > 0:
			c.Action, c.Diff, c.Limits = Update, limits, true
		case opts.Adopt && !cur.GetStatus().GetDeclared():
			c.Action, c.Note = Update, "declared from now on"
		default:
			c.Action = Unchanged
		}
		out = append(out, c)
	}
	for _, l := range current {
		if !open(l) || named[l.GetName()] || set.Keep[l.GetName()] {
			continue
		}
		c := Change{Name: l.GetName(), ID: l.GetId(), Drain: set.Drain}
		if d, ok := set.Drains[l.GetName()]; ok {
			c.Drain = d
		}
		switch {
		case opts.Prune && (opts.Owned == nil || opts.Owned(l)):
			c.Action = Close
			c.Note = "not in " + set.Source
		case opts.Others:
			c.Action = Keep
			c.Note = "not in " + set.Source + "; left alone without --prune"
		default:
			continue
		}
		out = append(out, c)
	}
	order := []Action{Close, Rebind, Update, Create, Unchanged, Keep}
	slices.SortStableFunc(out, func(a, b Change) int {
		return slices.Index(order, a.Action) - slices.Index(order, b.Action)
	})
	return out
}

// rebindNote says why a change needs a new listener.
func rebindNote(fields []string) string {
	for _, f := range fields {
		name, _, _ := strings.Cut(f, " ")
		switch name {
		case "host", "port", "backlog":
		default:
			return name + " cannot change in place: closed and created again, with a new id"
		}
	}
	return "a new socket: closed and created again, with a new id"
}

// diffSpecs compares two canonical specs field by field. It returns the
// differences that need a new listener and those of its limits, which
// change in place, each as "field old -> new". Faults are not compared.
func diffSpecs(cur, want *listenerdv1.ListenerSpec) (rebind, limits []string) {
	var all []string
	diffMessage("", cur.ProtoReflect(), want.ProtoReflect(), &all)
	for _, d := range all {
		if rest, ok := strings.CutPrefix(d, "limits."); ok {
			limits = append(limits, rest)
		} else {
			rebind = append(rebind, d)
		}
	}
	return rebind, limits
}

// diffMessage appends the fields that differ between a and b (of one
// type), under prefix.
func diffMessage(prefix string, a, b protoreflect.Message, out *[]string) {
	fields := a.Descriptor().Fields()
	oneofs := a.Descriptor().Oneofs()
	for i := range oneofs.Len() {
		od := oneofs.Get(i)
		if od.IsSynthetic() {
			continue
		}
		fa, fb := a.WhichOneof(od), b.WhichOneof(od)
		name := strings.TrimSuffix(prefix, ".")
		switch {
		case fa == nil && fb == nil:
		case fa == nil || fb == nil || fa.Number() != fb.Number():
			*out = append(*out, fmt.Sprintf("%s %s -> %s", name, oneofName(fa), oneofName(fb)))
		case fa.Kind() == protoreflect.MessageKind:
			diffMessage(prefix+string(fa.Name())+".", a.Get(fa).Message(), b.Get(fb).Message(), out)
		}
	}
	for i := range fields.Len() {
		fd := fields.Get(i)
		if od := fd.ContainingOneof(); od != nil && !od.IsSynthetic() {
			continue
		}
		if prefix == "" && fd.Name() == "faults" {
			continue
		}
		name := prefix + string(fd.Name())
		va, vb := a.Get(fd), b.Get(fd)
		ha, hb := a.Has(fd), b.Has(fd)
		if fd.Kind() == protoreflect.MessageKind && !fd.IsList() && !fd.IsMap() && !isWellKnown(fd) {
			if ha || hb {
				diffMessage(name+".", va.Message(), vb.Message(), out)
			}
			continue
		}
		if ha == hb && (!ha || equalValue(fd, va, vb)) {
			continue
		}
		*out = append(*out, fmt.Sprintf("%s %s -> %s", name, formatValue(fd, va, ha), formatValue(fd, vb, hb)))
	}
}

func oneofName(fd protoreflect.FieldDescriptor) string {
	if fd == nil {
		return "unset"
	}
	return string(fd.Name())
}

func isWellKnown(fd protoreflect.FieldDescriptor) bool {
	return strings.HasPrefix(string(fd.Message().FullName()), "google.protobuf.")
}

func equalValue(fd protoreflect.FieldDescriptor, a, b protoreflect.Value) bool {
	switch {
	case fd.IsList():
		la, lb := a.List(), b.List()
		if la.Len() != lb.Len() {
			return false
		}
		for i := range la.Len() {
			if !equalScalar(fd, la.Get(i), lb.Get(i)) {
				return false
			}
		}
		return true
	}
	return equalScalar(fd, a, b)
}

func equalScalar(fd protoreflect.FieldDescriptor, a, b protoreflect.Value) bool {
	if fd.Kind() == protoreflect.MessageKind {
		return proto.Equal(a.Message().Interface(), b.Message().Interface())
	}
	return a.Equal(b)
}

// formatValue writes a field's value for people: "unset" when not set,
// durations as 5s, enums by their short name, lists in brackets.
func formatValue(fd protoreflect.FieldDescriptor, v protoreflect.Value, has bool) string {
	switch {
	case !has && fd.IsList():
		return "[]"
	case !has && fd.HasPresence():
		return "unset"
	case !has:
		return formatScalar(fd, fd.Default()) // proto3's zero: 0, false, ""
	}
	if fd.IsList() {
		l := v.List()
		items := make([]string, l.Len())
		for i := range l.Len() {
			items[i] = formatScalar(fd, l.Get(i))
		}
		return "[" + strings.Join(items, ", ") + "]"
	}
	return formatScalar(fd, v)
}

func formatScalar(fd protoreflect.FieldDescriptor, v protoreflect.Value) string {
	switch fd.Kind() {
	case protoreflect.EnumKind:
		ev := fd.Enum().Values().ByNumber(v.Enum())
		if ev == nil {
			return fmt.Sprint(v.Enum())
		}
		// OVERFLOW_POLICY_QUEUE is queue: the prefix is the enum's name.
		prefix := strings.ToUpper(camelToSnake(string(fd.Enum().Name()))) + "_"
		return strings.ToLower(strings.TrimPrefix(string(ev.Name()), prefix))
	case protoreflect.MessageKind:
		if d, ok := v.Message().Interface().(*durationpb.Duration); ok {
			return d.AsDuration().String()
		}
		return fmt.Sprint(v.Message().Interface())
	case protoreflect.StringKind:
		if v.String() == "" {
			return `""`
		}
		return v.String()
	}
	return v.String()
}

// camelToSnake turns OverflowPolicy into overflow_policy.
func camelToSnake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// DiffEntries says what changes from one entry to another, one item a
// field, as a plan's Diff does (faults included, by name only), and the
// drain timeout as drain_timeout.
func DiffEntries(old, want Entry) []string {
	rebind, limits := diffSpecs(old.Spec, want.Spec)
	out := append(rebind, limits...)
	if !proto.Equal(&listenerdv1.ListenerSpec{Faults: old.Spec.GetFaults()}, &listenerdv1.ListenerSpec{Faults: want.Spec.GetFaults()}) {
		out = append(out, "faults")
	}
	if old.Drain != want.Drain {
		out = append(out, fmt.Sprintf("drain_timeout %v -> %v", old.Drain, want.Drain))
	}
	return out
}
