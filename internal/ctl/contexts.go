package ctl

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/listenerd/listenerd/internal/config"
	"github.com/listenerd/listenerd/internal/paths"
)

// CtlConfigEnv names the environment variable that stands in for
// --ctl-config, the path of ctl's contexts file.
const CtlConfigEnv = "LISTENERD_CTL_CONFIG"

// contextKey is one setting a context may hold: the name of the ctl flag it
// stands in for, the environment variable that beats it (if any), and the
// group it belongs to (a daemon's connection or NATS).
type contextKey struct {
	name  string
	env   string
	group string
	bool  bool
	path  bool // a file's path: relative in the file means from the file's directory
}

const (
	groupDaemon = "daemon"
	groupNATS   = "nats"
)

// contextKeys are the settings of a context, in the order they are written.
var contextKeys = []contextKey{
	{name: "socket", path: true, env: paths.SocketEnv, group: groupDaemon},
	{name: "api", env: APIEnv, group: groupDaemon},
	{name: "tls", group: groupDaemon, bool: true},
	{name: "ca", path: true, group: groupDaemon},
	{name: "cert", path: true, group: groupDaemon},
	{name: "key", path: true, group: groupDaemon},
	{name: "token-file", path: true, env: TokenFileEnv, group: groupDaemon},
	{name: "nats", env: "LISTENERD_NATS", group: groupNATS},
	{name: "nats-creds", path: true, env: "LISTENERD_NATS_CREDS", group: groupNATS},
	{name: "nats-token-file", path: true, env: "LISTENERD_NATS_TOKEN_FILE", group: groupNATS},
	{name: "nats-ca", path: true, env: "LISTENERD_NATS_CA", group: groupNATS},
}

// secretKeys are keys a context refuses: it names files that hold secrets,
// never the secrets themselves.
var secretKeys = map[string]string{
	"token":         "token-file",
	"nats-token":    "nats-token-file",
	"password":      "token-file",
	"nats-password": "nats-creds",
}

func lookupKey(name string) (contextKey, bool) {
	i := slices.IndexFunc(contextKeys, func(k contextKey) bool { return k.name == name })
	if i < 0 {
		return contextKey{}, false
	}
	return contextKeys[i], true
}

func keyNames() string {
	names := make([]string, len(contextKeys))
	for i, k := range contextKeys {
		names[i] = k.name
	}
	return strings.Join(names, ", ")
}

// ctxConfig is ctl's contexts file: named sets of connection settings and
// the one in use.
type ctxConfig struct {
	path     string
	current  string
	contexts map[string]map[string]string // name -> key -> value
}

var contextName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@:-]*$`)

func checkContextName(name string) error {
	if len(name) > 253 || !contextName.MatchString(name) {
		return fmt.Errorf("bad context name %q: want letters, digits and . _ @ : - (not first), at most 253", name)
	}
	return nil
}

// checkContextValue checks the value of one key of context name.
func checkContextValue(name, key, v string) error {
	k, ok := lookupKey(key)
	if !ok {
		if file, secret := secretKeys[key]; secret {
			return fmt.Errorf("context %q: key %q: a context holds no secrets; put it in a file and name the file with %s", name, key, file)
		}
		return fmt.Errorf("context %q: unknown key %q (known: %s)", name, key, keyNames())
	}
	switch {
	case v == "":
		return fmt.Errorf("context %q: key %q: empty value", name, key)
	case strings.ContainsAny(v, "\r\n\x00"):
		return fmt.Errorf("context %q: key %q: want one line", name, key)
	case k.bool && v != "true" && v != "false":
		return fmt.Errorf("context %q: key %q: want true or false, not %q", name, key, v)
	}
	return nil
}

// ctlConfigPath is --ctl-config, else $LISTENERD_CTL_CONFIG, else
// listenerd/ctl.yaml in the user's config directory.
func (a *app) ctlConfigPath() (string, error) {
	if a.ctlConfig != "" {
		return a.ctlConfig, nil
	}
	if p := os.Getenv(CtlConfigEnv); p != "" {
		return p, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", usageErrorf("cannot find the contexts file: %v (set --ctl-config or %s)", err, CtlConfigEnv)
	}
	return filepath.Join(dir, "listenerd", "ctl.yaml"), nil
}

// loadContexts reads the contexts file at path; a missing file is an empty
// one.
func loadContexts(path string) (*ctxConfig, error) {
	c := &ctxConfig{path: path, contexts: map[string]map[string]string{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, err
	}
	body, err := config.Document(path, data)
	if err != nil || body == nil {
		return c, err
	}
	pairs, err := config.Pairs(path, body)
	if err != nil {
		return nil, err
	}
	for _, p := range pairs {
		key, err := config.Scalar(path, "a key", p.Key)
		if err != nil {
			return nil, err
		}
		switch key {
		case "current-context":
			if c.current, err = config.Scalar(path, key, p.Value); err != nil {
				return nil, err
			}
		case "contexts":
			if err := c.readContexts(p); err != nil {
				return nil, err
			}
		default:
			return nil, config.PosError(path, p.Key, "unknown key %q (want current-context and contexts)", key)
		}
	}
	if c.current != "" && c.contexts[c.current] == nil {
		return nil, fmt.Errorf("%s: current-context %q: no such context", path, c.current)
	}
	return c, nil
}

func (c *ctxConfig) readContexts(p *ast.MappingValueNode) error {
	if p.Value == nil || p.Value.Type() == ast.NullType {
		return nil
	}
	pairs, err := config.Pairs(c.path, p.Value)
	if err != nil {
		return fmt.Errorf("contexts: %w", err)
	}
	for _, cp := range pairs {
		name, err := config.Scalar(c.path, "a context name", cp.Key)
		if err != nil {
			return err
		}
		if err := checkContextName(name); err != nil {
			return config.PosError(c.path, cp.Key, "%v", err)
		}
		settings := map[string]string{}
		if cp.Value != nil && cp.Value.Type() != ast.NullType {
			entries, err := config.Mapping(c.path, cp.Value)
			if err != nil {
				return fmt.Errorf("context %q: %w", name, err)
			}
			for _, e := range entries {
				if e.List {
					return fmt.Errorf("%s:%d:%d: context %q: key %q: want one value, not a list", c.path, e.Line, e.Col, name, e.Key)
				}
				if err := checkContextValue(name, e.Key, e.Value); err != nil {
					return fmt.Errorf("%s:%d:%d: %w", c.path, e.KeyLine, e.KeyCol, err)
				}
				settings[e.Key] = e.Value
			}
		}
		c.contexts[name] = settings
	}
	return nil
}

// names are the contexts' names, sorted.
func (c *ctxConfig) names() []string {
	return slices.Sorted(maps.Keys(c.contexts))
}

// save writes the file atomically (a temporary file in the same
// directory, synced, then renamed over it) with mode 0600, creating its
// directory with mode 0700 when missing. Comments in the old file are lost.
func (c *ctxConfig) save() error {
	if err := c.write(); err != nil {
		return fmt.Errorf("writing %s: %w", c.path, err)
	}
	return nil
}

func (c *ctxConfig) write() error {
	doc := yaml.MapSlice{}
	if c.current != "" {
		doc = append(doc, yaml.MapItem{Key: "current-context", Value: c.current})
	}
	ctxs := yaml.MapSlice{}
	for _, name := range c.names() {
		s := yaml.MapSlice{}
		for _, k := range contextKeys {
			if v, ok := c.contexts[name][k.name]; ok {
				s = append(s, yaml.MapItem{Key: k.name, Value: v})
			}
		}
		ctxs = append(ctxs, yaml.MapItem{Key: name, Value: s})
	}
	doc = append(doc, yaml.MapItem{Key: "contexts", Value: ctxs})
	data, err := yaml.MarshalWithOptions(doc, yaml.Indent(2))
	if err != nil {
		return err
	}
	data = append([]byte("# ctl's contexts: ctl config --help. Written by ctl config; comments are not kept.\n"), data...)
	dir := filepath.Dir(c.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".ctl.yaml-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename there is nothing to remove
	if err := f.Chmod(0o600); err != nil {
		_ = f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, c.path)
}

// explicit says whether the setting k was given on the command line or in
// the environment, which both beat a context.
func explicit(fs *pflag.FlagSet, k contextKey) bool {
	if f := fs.Lookup(k.name); f != nil && f.Changed {
		return true
	}
	return k.env != "" && os.Getenv(k.env) != ""
}

// useContext fills the flags of cmd that neither the command line nor the
// environment set from the context chosen by --context, else from the
// file's current-context. Naming the daemon (--socket or --api, or their
// variables) sets aside all the context's daemon keys, and naming the NATS
// server (--nats or LISTENERD_NATS) all its NATS keys: a context describes
// one daemon and one NATS, and its credentials would not fit another. It
// runs once.
func (a *app) useContext(cmd *cobra.Command) error {
	if a.contextUsed {
		return nil
	}
	a.contextUsed = true
	path, err := a.ctlConfigPath()
	if err != nil {
		if a.contextName == "" {
			return nil // no file to look at, and none asked for
		}
		return err
	}
	c, err := loadContexts(path)
	if err != nil {
		return usageErrorf("%v", err)
	}
	name := a.contextName
	if name == "" {
		name = c.current
	}
	if name == "" {
		return nil
	}
	settings, ok := c.contexts[name]
	if !ok {
		return usageErrorf("--context %q: no such context in %s (ctl config get-contexts)", name, path)
	}
	fs := cmd.Flags()
	given := func(name string) bool {
		k, _ := lookupKey(name)
		return explicit(fs, k)
	}
	aside := map[string]bool{
		groupDaemon: given("socket") || given("api"),
		groupNATS:   given("nats"),
	}
	for _, k := range contextKeys {
		v, ok := settings[k.name]
		f := fs.Lookup(k.name)
		if !ok || f == nil || aside[k.group] || explicit(fs, k) {
			continue
		}
		if k.path && !filepath.IsAbs(v) {
			v = filepath.Join(filepath.Dir(path), v)
		}
		// Value.Set, not FlagSet.Set: the flag stays unchanged for the
		// checks that ask whether the user gave it.
		if err := f.Value.Set(v); err != nil {
			return usageErrorf("context %q in %s: key %q: %v", name, path, k.name, err)
		}
		a.contextKeys = append(a.contextKeys, k.name)
		if k.name == "socket" || k.name == "api" {
			a.contextAddr = v
		}
	}
	a.contextFrom = fmt.Sprintf("context %q in %s", name, path)
	return nil
}

// blameContext says which context and file gave the flags that msg, an
// error, names: " (--token-file from context "web" in FILE)", or "".
func (a *app) blameContext(msg string) string {
	var from []string
	for _, k := range a.contextKeys {
		if strings.Contains(msg, "--"+k+" ") || strings.Contains(msg, "--"+k+":") || strings.Contains(msg, "--"+k+"/") {
			from = append(from, "--"+k)
		}
	}
	if len(from) == 0 && a.contextAddr != "" && strings.Contains(msg, a.contextAddr) {
		return fmt.Sprintf(" (%s)", a.contextFrom)
	}
	if len(from) == 0 {
		return ""
	}
	return fmt.Sprintf(" (%s from %s)", strings.Join(from, ", "), a.contextFrom)
}

// withContext wraps the RunE of cmd and its children, except those marked
// noContext (ctl config), so that the chosen context fills their flags
// before they run.
func (a *app) withContext(cmd *cobra.Command) {
	if cmd.Annotations[noContext] != "" {
		return
	}
	if run := cmd.RunE; run != nil {
		cmd.RunE = func(c *cobra.Command, args []string) error {
			if err := a.useContext(c); err != nil {
				return err
			}
			return run(c, args)
		}
	}
	for _, c := range cmd.Commands() {
		a.withContext(c)
	}
}

// noContext marks a command that works on the contexts file itself.
const noContext = "ctl.noContext"
