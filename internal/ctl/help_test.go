package ctl

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// Every command and subcommand, completion's included, shows an example.
func TestEveryHelpHasAnExample(t *testing.T) {
	root := newApp(nil, nil).rootCmd()
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if !c.Hidden && strings.TrimSpace(c.Example) == "" {
			t.Errorf("%q has no Example", c.CommandPath())
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	r := runCtl(t, "/nonexistent.sock", "rebind", "--help")
	if r.code != ExitOK || !strings.Contains(r.stdout, "Examples:\n  ctl ls") {
		t.Errorf("rebind --help: exit %d, stdout %q", r.code, r.stdout)
	}
}
