package declare

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/config"
	"github.com/listenerd/listenerd/internal/listener"
	"github.com/listenerd/listenerd/internal/service"
)

// Entry is one declared listener.
type Entry struct {
	Name string
	// Spec is the listener's spec, checked and with the defaults filled in
	// (service.CanonicalSpec).
	Spec *listenerdv1.ListenerSpec
	// Drain is how long its connections may drain when a change closes it
	// (a rebind, or its removal).
	Drain time.Duration
	// Where is path:line:column of its name in the file.
	Where string
}

// Set is a desired set of listeners.
type Set struct {
	// Source says where the set came from, for events and logs: "file
	// PATH".
	Source string
	// Entries are the listeners, by name.
	Entries []Entry
	// Drain is the drain timeout of listeners closed because the set no
	// longer names them.
	Drain time.Duration
	// Drains, by name, overrides Drain for a listener closed because the
	// set no longer names it: a bucket's deleted key's last drain timeout.
	Drains map[string]time.Duration
	// Keep names listeners left as they are although the set does not
	// name them: those whose desired value does not read (a bucket's).
	Keep map[string]bool
}

// Names of the file's keys: the spec is protojson, so the file's own keys
// are lowerCamelCase too.
const (
	keyListeners = "listeners"
	keySpec      = "spec"
	keyDrain     = "drainTimeout"
)

// ReadFile reads a listeners file (see Parse).
func ReadFile(path string) (*Set, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse reads a listeners file named path, strictly: an unknown key, a
// repeated key (a listener declared twice), an anchor, alias or tag, a
// listener name the API would refuse, or a spec that CreateListener would
// refuse is an error that starts path:line:column, and names the
// listener and the spec's field. The file is one YAML mapping:
//
//	listeners:
//	  web:
//	    spec: {host: 127.0.0.1, port: 8080, handler: {echo: {}}}
//	    drainTimeout: 10s        # optional, for this listener
//	drainTimeout: 5s           # optional, for every listener (default 30s)
//
// where each spec is the API's ListenerSpec in protojson (lowerCamelCase
// field names, durations as "5s", enums by name). An empty file declares
// no listener.
func Parse(path string, data []byte) (*Set, error) {
	p := &fileParser{path: path}
	set, err := p.parse(data)
	if err != nil {
		return nil, err
	}
	set.Source = "file " + path
	return set, nil
}

type fileParser struct{ path string }

func (p *fileParser) errAt(n ast.Node, format string, args ...any) error {
	pos := n.GetToken().Position
	return fmt.Errorf("%s:%d:%d: %s", p.path, pos.Line, pos.Column, fmt.Sprintf(format, args...))
}

func (p *fileParser) parse(data []byte) (*Set, error) {
	body, err := p.document(data)
	if err != nil || body == nil {
		return &Set{Drain: listener.DefaultDrainTimeout}, err
	}
	return p.set(body, "the file")
}

// document parses data as one YAML document and returns its body; nil
// when there is none.
func (p *fileParser) document(data []byte) (ast.Node, error) {
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		var ye yaml.Error
		if errors.As(err, &ye) && ye.GetToken() != nil {
			pos := ye.GetToken().Position
			return nil, fmt.Errorf("%s:%d:%d: %s", p.path, pos.Line, pos.Column, ye.GetMessage())
		}
		return nil, fmt.Errorf("%s: %w", p.path, err)
	}
	var body ast.Node
	for _, d := range f.Docs {
		if d == nil || d.Body == nil || d.Body.Type() == ast.CommentType {
			continue
		}
		if body != nil {
			return nil, p.errAt(d.Body, "one YAML document only")
		}
		body = d.Body
	}
	return body, nil
}

// set reads a listeners mapping (listeners:, drainTimeout:), what the
// whole file is, or one host's part of a fleet file.
func (p *fileParser) set(body ast.Node, what string) (*Set, error) {
	set := &Set{Drain: listener.DefaultDrainTimeout}
	if body.Type() == ast.NullType {
		return set, nil
	}
	top, err := p.mapping(body, what)
	if err != nil {
		return nil, err
	}
	var listeners *ast.MappingValueNode
	for _, kv := range top {
		switch key := p.key(kv); key {
		case keyListeners:
			listeners = kv
		case keyDrain:
			if set.Drain, err = p.duration(kv.Value, keyDrain); err != nil {
				return nil, err
			}
		default:
			return nil, p.errAt(kv.Key, "unknown key %q (want %s or %s)", key, keyListeners, keyDrain)
		}
	}
	if listeners == nil || listeners.Value.Type() == ast.NullType {
		return set, nil
	}
	entries, err := p.mapping(listeners.Value, keyListeners)
	if err != nil {
		return nil, err
	}
	for _, kv := range entries {
		e, err := p.entry(kv)
		if err != nil {
			return nil, err
		}
		if e.Drain < 0 {
			e.Drain = set.Drain
		}
		set.Entries = append(set.Entries, e)
	}
	slices.SortFunc(set.Entries, func(a, b Entry) int { return strings.Compare(a.Name, b.Name) })
	return set, nil
}

// mapping returns the pairs of a mapping node, refusing a repeated key.
func (p *fileParser) mapping(n ast.Node, what string) ([]*ast.MappingValueNode, error) {
	var pairs []*ast.MappingValueNode
	switch m := n.(type) {
	case *ast.MappingNode:
		pairs = m.Values
	case *ast.MappingValueNode:
		pairs = []*ast.MappingValueNode{m}
	default:
		return nil, p.errAt(n, "%s: want a mapping (key: value), not %s", what, nodeKind(n))
	}
	seen := map[string]*ast.MappingValueNode{}
	for _, kv := range pairs {
		k, ok := kv.Key.(ast.ScalarNode)
		if !ok || kv.Key.Type() == ast.NullType {
			return nil, p.errAt(kv.Key, "%s: a key must be a name", what)
		}
		key := fmt.Sprint(k.GetValue())
		if prev := seen[key]; prev != nil {
			pos := prev.Key.GetToken().Position
			return nil, p.errAt(kv.Key, "%s: %q repeated (first at line %d)", what, key, pos.Line)
		}
		seen[key] = kv
	}
	return pairs, nil
}

func (p *fileParser) key(kv *ast.MappingValueNode) string {
	return fmt.Sprint(kv.Key.(ast.ScalarNode).GetValue())
}

func (p *fileParser) duration(n ast.Node, what string) (time.Duration, error) {
	s, ok := n.(*ast.StringNode)
	if !ok {
		return 0, p.errAt(n, "%s: want a duration such as 5s or 1m30s, not %s", what, nodeKind(n))
	}
	d, err := time.ParseDuration(s.Value)
	if err != nil || d < 0 {
		return 0, p.errAt(n, "%s: %q is not a duration of 0 or more; for example 5s or 1m30s", what, s.Value)
	}
	return d, nil
}

// entry reads one listener: name: {spec: ..., drainTimeout: ...}.
func (p *fileParser) entry(kv *ast.MappingValueNode) (Entry, error) {
	return p.entryAt(p.key(kv), kv.Key, kv.Value)
}

// entryAt reads one listener's value (spec:, drainTimeout:) named name;
// at is where errors about the whole of it point.
func (p *fileParser) entryAt(name string, at, value ast.Node) (Entry, error) {
	e := Entry{Name: name, Drain: -1}
	pos := at.GetToken().Position
	e.Where = fmt.Sprintf("%s:%d:%d", p.path, pos.Line, pos.Column)
	if err := listener.ValidateName(name); err != nil || name == "" {
		if err == nil {
			err = errors.New("a name is required")
		}
		return e, p.errAt(at, "listener %q: %v", name, err)
	}
	what := fmt.Sprintf("listener %q", name)
	if value == nil || value.Type() == ast.NullType {
		return e, p.errAt(at, "%s: no spec (want spec: {...})", what)
	}
	fields, err := p.mapping(value, what)
	if err != nil {
		return e, err
	}
	var spec ast.Node
	for _, f := range fields {
		switch key := p.key(f); key {
		case keySpec:
			spec = f.Value
		case keyDrain:
			if e.Drain, err = p.duration(f.Value, what+": "+keyDrain); err != nil {
				return e, err
			}
		default:
			return e, p.errAt(f.Key, "%s: unknown key %q (want %s or %s)", what, key, keySpec, keyDrain)
		}
	}
	if spec == nil || spec.Type() == ast.NullType {
		return e, p.errAt(at, "%s: no spec (want spec: {...})", what)
	}
	if e.Spec, err = p.spec(spec, what); err != nil {
		return e, err
	}
	return e, nil
}

// protoPos is the position protojson gives in its errors: of the JSON the
// YAML became, not of the file.
// (protobuf separates its prefix with a space or a no-break space, at
// random.)
var protoPos = regexp.MustCompile(`^proto:[\s\x{a0}]*(\(line \d+:\d+\):[\s\x{a0}]*)?`)

// spec reads a spec node as the API's ListenerSpec in protojson, and
// checks it as CreateListener would.
func (p *fileParser) spec(n ast.Node, what string) (*listenerdv1.ListenerSpec, error) {
	if bad := plainYAML(n); bad != nil {
		return nil, p.errAt(bad, "%s: %s is not allowed here", what, nodeKind(bad))
	}
	var v any
	if err := yaml.NodeToValue(n, &v); err != nil {
		return nil, p.errAt(n, "%s: spec: %v", what, err)
	}
	goDurations(v, (&listenerdv1.ListenerSpec{}).ProtoReflect().Descriptor())
	js, err := json.Marshal(v)
	if err != nil {
		return nil, p.errAt(n, "%s: spec: %v", what, err)
	}
	var spec listenerdv1.ListenerSpec
	if err := (protojson.UnmarshalOptions{}).Unmarshal(js, &spec); err != nil {
		return nil, p.errAt(n, "%s: spec: %s", what, protoPos.ReplaceAllString(err.Error(), ""))
	}
	canon, err := service.CanonicalSpec(&spec)
	if err != nil {
		return nil, p.errAt(n, "%s: %v", what, err)
	}
	return canon, nil
}

// plainYAML returns the first anchor, alias, tag or merge key under n, or
// nil: a spec is plain data.
func plainYAML(n ast.Node) ast.Node {
	var bad ast.Node
	ast.Walk(visitor(func(n ast.Node) bool {
		switch n.Type() {
		case ast.AnchorType, ast.AliasType, ast.TagType, ast.MergeKeyType:
			bad = n
		}
		return bad == nil
	}), n)
	return bad
}

type visitor func(ast.Node) bool

func (v visitor) Visit(n ast.Node) ast.Visitor {
	if !v(n) {
		return nil
	}
	return v
}

// nodeKind names a node's type for an error: "a mapping".
func nodeKind(n ast.Node) string {
	if n.Type() == ast.NullType {
		return "nothing"
	}
	return config.WithArticle(config.NodeKind(n))
}

// goDurations rewrites, in v (a spec decoded from YAML), the durations
// written as Go writes them ("5m", "1h30m") as protojson takes them
// ("300s"), guided by md; anything else is left for protojson to judge.
func goDurations(v any, md protoreflect.MessageDescriptor) {
	m, ok := v.(map[string]any)
	if !ok {
		return
	}
	for k, val := range m {
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(k))
		}
		if fd == nil || fd.Kind() != protoreflect.MessageKind {
			continue
		}
		switch {
		case fd.Message().FullName() == "google.protobuf.Duration":
			if s, ok := val.(string); ok {
				if d, err := time.ParseDuration(s); err == nil {
					m[k] = strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s"
				}
			}
		case fd.IsList():
			if items, ok := val.([]any); ok {
				for _, it := range items {
					goDurations(it, fd.Message())
				}
			}
		default:
			goDurations(val, fd.Message())
		}
	}
}
