package config

import (
	"fmt"
	"io"
	"strings"

	"github.com/goccy/go-yaml"
)

// Mask stands for a secret value that is set.
const Mask = "********"

// WriteYAML writes the configuration as a YAML file that the config flag
// reads back (secrets aside), each key followed by a comment that says
// where its value came from. Secret values are masked.
func (e *Effective) WriteYAML(w io.Writer, header string) error {
	var b strings.Builder
	if header != "" {
		for line := range strings.Lines(header) {
			fmt.Fprintf(&b, "# %s", line)
		}
		b.WriteString("\n")
	}
	lines := make([]string, len(e.Settings))
	width := 0
	for i, s := range e.Settings {
		lines[i] = s.Name + ": " + yamlValue(s)
		width = max(width, len(lines[i]))
	}
	for i, s := range e.Settings {
		from := s.Source.String()
		if s.Where != "" {
			from += " " + s.Where
		}
		if s.Secret {
			from += ", secret"
		}
		fmt.Fprintf(&b, "%-*s  # %s\n", width, lines[i], from)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// yamlValue is a setting's value as YAML: numbers, booleans and durations
// as they are, strings quoted when YAML would read them otherwise.
func yamlValue(s Setting) string {
	v := s.Value
	if s.Secret && v != "" {
		v = Mask
	}
	switch s.Type {
	case "bool", "int", "int64", "int32", "uint", "uint64", "uint32", "float64", "float32", "duration":
		return v
	}
	out, err := yaml.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%q", v)
	}
	return strings.TrimSuffix(string(out), "\n")
}
