package config

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
)

// Entry is one key of a YAML file's top-level mapping: its value as text
// (a sequence's items joined by commas) and where it is.
type Entry struct {
	Key       string
	Value     string
	Line, Col int  // of the value (of the key when the value is empty)
	KeyLine   int  // of the key
	KeyCol    int  // of the key
	List      bool // the value was a sequence
}

// ReadFile reads a YAML file whose document is one mapping of keys to
// scalars or sequences of scalars, strictly: a duplicate key, a nested
// mapping, an anchor, an alias or a tag is an error. Errors start with
// path:line:column. An empty file (or one of comments only) has no entries.
func ReadFile(path string) ([]Entry, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse is ReadFile of data, named path in errors.
func Parse(path string, data []byte) ([]Entry, error) {
	body, err := Document(path, data)
	if err != nil || body == nil {
		return nil, err
	}
	return Mapping(path, body)
}

// Document parses data, named path in errors, as one YAML document and
// returns its body: nil when there is none (an empty file, or comments
// only). Duplicate keys are errors, anywhere in the document.
func Document(path string, data []byte) (ast.Node, error) {
	f, err := parser.ParseBytes(data, 0)
	if err != nil {
		var ye yaml.Error
		if errors.As(err, &ye) && ye.GetToken() != nil {
			p := ye.GetToken().Position
			return nil, fmt.Errorf("%s:%d:%d: %s", path, p.Line, p.Column, ye.GetMessage())
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var docs []*ast.DocumentNode
	for _, d := range f.Docs {
		if d != nil && d.Body != nil && d.Body.Type() != ast.CommentType {
			docs = append(docs, d)
		}
	}
	switch {
	case len(docs) == 0:
		return nil, nil
	case len(docs) > 1:
		return nil, PosError(path, docs[1].Body, "one YAML document only")
	}
	return docs[0].Body, nil
}

// Pairs are the key: value pairs of a mapping node, or an error naming
// what n is instead.
func Pairs(path string, n ast.Node) ([]*ast.MappingValueNode, error) {
	switch n := n.(type) {
	case *ast.MappingNode:
		return n.Values, nil
	case *ast.MappingValueNode:
		return []*ast.MappingValueNode{n}, nil
	}
	return nil, PosError(path, n, "want a mapping of keys to values (key: value), not %s", WithArticle(NodeKind(n)))
}

// Mapping reads n, a mapping of keys to scalars or sequences of scalars,
// strictly: a nested mapping, an anchor, an alias or a tag is an error.
// Errors start with path:line:column.
func Mapping(path string, n ast.Node) ([]Entry, error) {
	pairs, err := Pairs(path, n)
	if err != nil {
		return nil, err
	}
	entries := make([]Entry, 0, len(pairs))
	for _, p := range pairs {
		key, ok := p.Key.(ast.ScalarNode)
		if !ok || key.Type() == ast.NullType {
			return nil, PosError(path, p.Key, "a key must be a name")
		}
		name := fmt.Sprint(key.GetValue())
		e := Entry{Key: name}
		kp := p.Key.GetToken().Position
		e.KeyLine, e.KeyCol = kp.Line, kp.Column
		v, list, err := value(p.Value)
		if err != nil {
			return nil, PosError(path, err.node, "%s: %s", name, err.msg)
		}
		e.Value, e.List = v, list
		e.Line, e.Col = e.KeyLine, e.KeyCol
		if p.Value != nil && p.Value.Type() != ast.NullType {
			vp := p.Value.GetToken().Position
			e.Line, e.Col = vp.Line, vp.Column
		}
		entries = append(entries, e)
	}
	return entries, nil
}

type nodeError struct {
	node ast.Node
	msg  string
}

// value is the text of a scalar, or of a sequence of scalars joined by
// commas.
func value(n ast.Node) (string, bool, *nodeError) {
	if seq, ok := n.(*ast.SequenceNode); ok {
		items := make([]string, 0, len(seq.Values))
		for _, item := range seq.Values {
			s, err := scalar(item)
			if err != nil {
				return "", false, err
			}
			items = append(items, s)
		}
		return strings.Join(items, ","), true, nil
	}
	s, err := scalar(n)
	return s, false, err
}

// scalar is the text of a scalar as written (an integer's digits, not its
// value); "" for null.
func scalar(n ast.Node) (string, *nodeError) {
	switch n := n.(type) {
	case nil, *ast.NullNode:
		return "", nil
	case *ast.StringNode:
		return n.Value, nil
	case *ast.LiteralNode:
		return strings.TrimSuffix(n.Value.Value, "\n"), nil
	case *ast.IntegerNode, *ast.FloatNode, *ast.BoolNode, *ast.InfinityNode, *ast.NanNode:
		return n.GetToken().Value, nil
	}
	return "", &nodeError{n, "want a value, not " + WithArticle(NodeKind(n))}
}

// WithArticle puts "a" or "an" before a word.
func WithArticle(w string) string {
	if w != "" && strings.ContainsRune("aeiou", rune(w[0])) {
		return "an " + w
	}
	return "a " + w
}

// NodeKind names a YAML node's type for an error: mapping, list, anchor (&)...
func NodeKind(n ast.Node) string {
	switch n.Type() {
	case ast.MappingType, ast.MappingValueType:
		return "mapping"
	case ast.SequenceType:
		return "list"
	case ast.AnchorType:
		return "anchor (&)"
	case ast.AliasType:
		return "alias (*)"
	case ast.TagType:
		return "tagged value (!)"
	}
	return strings.ToLower(n.Type().String())
}

// PosError is an error about node n of the file path, starting
// path:line:column.
func PosError(path string, n ast.Node, format string, args ...any) error {
	p := n.GetToken().Position
	return fmt.Errorf("%s:%d:%d: %s", path, p.Line, p.Column, fmt.Sprintf(format, args...))
}

// Scalar is the text of n, the value of key, which must be a scalar (""
// for null); errors start with path:line:column.
func Scalar(path, key string, n ast.Node) (string, error) {
	s, err := scalar(n)
	if err != nil {
		return "", PosError(path, err.node, "%s: %s", key, err.msg)
	}
	return s, nil
}
