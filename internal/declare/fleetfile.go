package declare

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/goccy/go-yaml/ast"
	"google.golang.org/protobuf/encoding/protojson"
)

// Fleet is a fleet file: the listeners of each host, by host name.
type Fleet struct {
	// Hosts are the hosts' sets, by name; Names in the file's order,
	// sorted.
	Hosts map[string]*Set
	Names []string
}

// keyHosts is the fleet file's one key.
const keyHosts = "hosts"

// ReadFleetFile reads a fleet file (see ParseFleet).
func ReadFleetFile(path string, checkHost func(string) error) (*Fleet, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseFleet(path, data, checkHost)
}

// ParseFleet reads a fleet file named path: one YAML mapping, hosts, whose
// keys are host names (checked by checkHost) and whose values are each a
// listeners file's body, read as Parse reads one:
//
//	hosts:
//	  east:
//	    listeners:
//	      web: {spec: {host: 127.0.0.1, port: 8080, handler: {echo: {}}}}
//	    drainTimeout: 5s
//	  west:
//	    listeners: {}
//
// Each entry's drain timeout is resolved (its own or its host's).
func ParseFleet(path string, data []byte, checkHost func(string) error) (*Fleet, error) {
	p := &fileParser{path: path}
	body, err := p.document(data)
	if err != nil {
		return nil, err
	}
	fl := &Fleet{Hosts: map[string]*Set{}}
	if body == nil {
		return fl, nil
	}
	top, err := p.mapping(body, "the file")
	if err != nil {
		return nil, err
	}
	var hosts *ast.MappingValueNode
	for _, kv := range top {
		if key := p.key(kv); key != keyHosts {
			return nil, p.errAt(kv.Key, "unknown key %q (want %s)", key, keyHosts)
		}
		hosts = kv
	}
	if hosts == nil || hosts.Value.Type() == ast.NullType {
		return fl, nil
	}
	pairs, err := p.mapping(hosts.Value, keyHosts)
	if err != nil {
		return nil, err
	}
	for _, kv := range pairs {
		host := p.key(kv)
		if checkHost != nil {
			if err := checkHost(host); err != nil {
				return nil, p.errAt(kv.Key, "host %q: %v", host, err)
			}
		}
		var set *Set
		if kv.Value == nil {
			set = &Set{}
		} else if set, err = p.set(kv.Value, fmt.Sprintf("host %q", host)); err != nil {
			return nil, err
		}
		set.Source = "file " + path + " host " + host
		fl.Hosts[host] = set
		fl.Names = append(fl.Names, host)
	}
	slices.Sort(fl.Names)
	return fl, nil
}

// entryJSON is an entry as a key-value bucket holds it: the listeners
// file's shape, in JSON, with the drain timeout always written.
type entryJSON struct {
	Spec  json.RawMessage `json:"spec"`
	Drain string          `json:"drainTimeout"`
}

// EncodeEntry writes e as JSON in the listeners file's shape:
// {"spec": {...protojson...}, "drainTimeout": "5s"}. The same entry always
// gives the same bytes, so that equal entries compare equal.
func EncodeEntry(e Entry) ([]byte, error) {
	spec, err := protojson.MarshalOptions{}.Marshal(e.Spec)
	if err != nil {
		return nil, err
	}
	// protojson's output is not stable byte for byte: compact it.
	var compact bytes.Buffer
	if err := json.Compact(&compact, spec); err != nil {
		return nil, err
	}
	return json.Marshal(entryJSON{Spec: compact.Bytes(), Drain: e.Drain.String()})
}

// ParseEntry reads one listener named name from data as EncodeEntry
// writes it (or in any YAML of the listeners file's entry shape), checked
// as Parse checks a file's; where names the data in errors (a key). An
// entry without drainTimeout drains for drain.
func ParseEntry(where, name string, data []byte, drain time.Duration) (Entry, error) {
	p := &fileParser{path: where}
	body, err := p.document(data)
	if err != nil {
		return Entry{Name: name}, err
	}
	if body == nil {
		return Entry{Name: name}, fmt.Errorf("%s: listener %q: empty (want {\"spec\": {...}})", where, name)
	}
	e, err := p.entryAt(name, body, body)
	if err != nil {
		return e, err
	}
	if e.Drain < 0 {
		e.Drain = drain
	}
	e.Where = where
	return e, nil
}
