// Package config layers a command's configuration: its flags, then the
// environment (PREFIX_FLAG_NAME), then an optional YAML file whose keys are
// the flag names, then the flags' defaults. The flags are declared once,
// on a pflag.FlagSet; this package fills in what the command line left
// unset and remembers where each value came from.
package config

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// Source is where a setting's value came from.
type Source int

// The sources, lowest precedence first.
const (
	Default Source = iota
	File
	Env
	Flag
)

func (s Source) String() string {
	return [...]string{"default", "file", "env", "flag"}[s]
}

// Annotations of a flag, set with Secret, List and Example.
const (
	annSecret  = "config.secret"
	annList    = "config.list"
	annExample = "config.example"
)

// Secret marks the flag name of fs secret: `config` prints its value
// masked.
func Secret(fs *pflag.FlagSet, name string) { annotate(fs, name, annSecret, "true") }

// List marks the flag name of fs a comma-separated list: a file may give
// it as a YAML sequence.
func List(fs *pflag.FlagSet, name string) { annotate(fs, name, annList, "true") }

// Example sets the example of a valid value that errors about the flag
// name show ("5s or 1m30s"), in place of the one its type implies.
func Example(fs *pflag.FlagSet, name, example string) { annotate(fs, name, annExample, example) }

func annotate(fs *pflag.FlagSet, name, key, value string) {
	if err := fs.SetAnnotation(name, key, []string{value}); err != nil {
		panic("config: " + err.Error()) // a flag declared in the program, not input
	}
}

func annotated(f *pflag.Flag, key string) string {
	if v := f.Annotations[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// notSettings are flags that are actions of the command line, not
// settings: neither the environment nor a file sets them.
var notSettings = map[string]bool{"help": true, "version": true}

// Setting is one flag's value in force and where it came from.
type Setting struct {
	Name   string
	Value  string // as the flag prints it
	Type   string // the flag's type (pflag's Value.Type)
	Source Source
	Where  string // the variable (Env) or path:line:column (File)
	Secret bool
}

// Effective is the configuration in force once Resolve has run.
type Effective struct {
	File     string    // the config file read, "" for none
	Settings []Setting // in the flags' order
	byName   map[string]int
}

// Lookup is the setting of the flag name.
func (e *Effective) Lookup(name string) (Setting, bool) {
	i, ok := e.byName[name]
	if !ok {
		return Setting{}, false
	}
	return e.Settings[i], true
}

// EnvName is the environment variable of a flag: prefix_NAME, upper case,
// dashes as underscores (LISTENERD_SHUTDOWN_TIMEOUT).
func EnvName(prefix, flag string) string {
	return prefix + "_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// Resolve completes fs, already parsed from the command line, from the
// environment (lookup, usually os.LookupEnv; an empty variable counts as
// unset) and from the YAML file named by the flag fileFlag (itself set on
// the command line or in the environment; "" or no such flag: no file).
// A flag set on the command line wins over the environment, which wins
// over the file. Errors name the flag, the variable or the file's
// position, and give an example of a valid value.
func Resolve(fs *pflag.FlagSet, prefix, fileFlag string, lookup func(string) (string, bool)) (*Effective, error) {
	eff := &Effective{byName: map[string]int{}}
	src := map[string]Setting{}
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || notSettings[f.Name] {
			return
		}
		if f.Changed {
			src[f.Name] = Setting{Source: Flag}
			return
		}
		name := EnvName(prefix, f.Name)
		if v, ok := lookup(name); ok && v != "" {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %s", name, v, reason(f, e))
				return
			}
			src[f.Name] = Setting{Source: Env, Where: name}
		}
	})
	if err != nil {
		return nil, err
	}
	if f := fs.Lookup(fileFlag); f != nil && f.Value.String() != "" {
		eff.File = f.Value.String()
		if err := applyFile(fs, eff.File, fileFlag, src); err != nil {
			return nil, err
		}
	}
	fs.VisitAll(func(f *pflag.Flag) {
		if notSettings[f.Name] || f.Name == fileFlag {
			return
		}
		s := src[f.Name]
		s.Name, s.Value, s.Type = f.Name, f.Value.String(), f.Value.Type()
		s.Secret = annotated(f, annSecret) != ""
		eff.byName[f.Name] = len(eff.Settings)
		eff.Settings = append(eff.Settings, s)
	})
	return eff, nil
}

// applyFile sets, from the file at path, the flags neither the command
// line nor the environment set. Every key must be a flag.
func applyFile(fs *pflag.FlagSet, path, fileFlag string, src map[string]Setting) error {
	entries, err := ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("--%s %s: no such file", fileFlag, path)
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		f := fs.Lookup(e.Key)
		at := fmt.Sprintf("%s:%d:%d", path, e.Line, e.Col)
		switch {
		case f == nil || notSettings[e.Key]:
			return fmt.Errorf("%s:%d:%d: unknown key %q (the keys are the flags' names, as listenerd --help lists them)", path, e.KeyLine, e.KeyCol, e.Key)
		case e.Key == fileFlag:
			return fmt.Errorf("%s:%d:%d: %s: a config file cannot name another", path, e.KeyLine, e.KeyCol, e.Key)
		case e.List && annotated(f, annList) == "":
			return fmt.Errorf("%s: %s: takes one value, not a list", at, e.Key)
		}
		if s, ok := src[e.Key]; ok && s.Source > File {
			continue // the command line or the environment said otherwise
		}
		if err := fs.Set(e.Key, e.Value); err != nil {
			return fmt.Errorf("%s: %s: %q: %s", at, e.Key, e.Value, reason(f, err))
		}
		src[e.Key] = Setting{Source: File, Where: at}
	}
	return nil
}

// FlagError rewrites a command-line parse error of fs about a flag's value
// in the words of the others: the flag, the value, why, and an example. A
// long flag written with one dash (-socket, as Go's flag package took it)
// is pointed at its two-dash form. Other errors are returned as they are.
func FlagError(fs *pflag.FlagSet, err error) error {
	var inv *pflag.InvalidValueError
	if errors.As(err, &inv) {
		return fmt.Errorf("--%s %q: %s", inv.GetFlag().Name, inv.GetValue(), reason(inv.GetFlag(), inv))
	}
	var ne *pflag.NotExistError
	if errors.As(err, &ne) {
		name, _, _ := strings.Cut(ne.GetSpecifiedShortnames(), "=")
		if len(name) > 1 && fs.Lookup(name) != nil {
			return fmt.Errorf("%w (long flags take two dashes: --%s)", err, name)
		}
	}
	return err
}

// reason says why a value of f was refused, with an example of a valid
// one.
func reason(f *pflag.Flag, err error) string {
	var inv *pflag.InvalidValueError
	if errors.As(err, &inv) {
		err = inv.Unwrap()
	}
	example := annotated(f, annExample)
	var why string
	switch f.Value.Type() {
	case "duration":
		why, example = "not a duration", or(example, "5s or 1m30s")
	case "int", "int64", "int32", "uint", "uint64", "uint32":
		why, example = "not an integer", or(example, nonZero(f.DefValue, "100"))
	case "float64", "float32":
		why, example = "not a number", or(example, nonZero(f.DefValue, "2.5"))
	case "bool":
		why, example = "not a boolean", or(example, "true or false")
	default:
		why = err.Error()
	}
	if example == "" {
		return why
	}
	return why + "; for example " + example
}

func or(s, def string) string {
	if s != "" {
		return s
	}
	return def
}

func nonZero(s, def string) string {
	if s == "" || s == "0" {
		return def
	}
	return s
}

// Explain adds to an error about a flag (one that starts "--name") where
// the flag's value came from, when not the command line: "(from
// LISTENERD_HISTORY)", "(from f.yaml:3:10)".
func (e *Effective) Explain(err error) error {
	if err == nil || e == nil {
		return err
	}
	msg := err.Error()
	rest, ok := strings.CutPrefix(msg, "--")
	if !ok {
		return err
	}
	name, _, _ := strings.Cut(rest, " ")
	name = strings.TrimSuffix(name, ":")
	s, ok := e.Lookup(name)
	if !ok || (s.Source != Env && s.Source != File) {
		return err
	}
	return fmt.Errorf("%w (from %s)", err, s.Where)
}
