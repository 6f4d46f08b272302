package ctl

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const configLong = `A context is a named set of ctl's connection settings: the daemon's unix
--socket, or its TCP API (--api, --tls, --ca, --cert, --key, --token-file),
and the NATS server of ctl fleet (--nats, --nats-creds, --nats-token-file,
--nats-ca). They live in the contexts file, listenerd/ctl.yaml in the user's
config directory (` + "`--ctl-config`" + ` or ` + CtlConfigEnv + ` name another), with the
current-context that ctl uses when --context does not name one.

A setting comes from, first to last: its flag, its environment variable
(LISTENERD_SOCKET, LISTENERD_API, LISTENERD_TOKEN_FILE, LISTENERD_NATS...),
the context, the default. Naming the daemon yourself (--socket or --api, or
their variables) sets all the context's daemon keys aside, and naming the
NATS server (--nats, LISTENERD_NATS) all its NATS keys: a context's
credentials belong to its own daemon.

The file is written atomically with mode 0600. It names files that hold
tokens, never tokens: a key such as token is refused.`

func (a *app) configCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Manage contexts: named connection settings for ctl (like kubectl's)",
		Long:  configLong,
		Example: `  ctl config set-context local --socket /run/listenerd/listenerd.sock
  ctl config set-context web-1 --api web-1.example:7443 --ca ca.pem --token-file ~/.web-1.token
  ctl config use-context web-1
  ctl ls                     # on web-1
  ctl --context local ls     # on local, once
  ctl config get-contexts`,
		Annotations: map[string]string{noContext: "true"},
	}
	cmd.AddCommand(a.setContextCmd(), a.useContextCmd(), a.getContextsCmd(), a.currentContextCmd(), a.deleteContextCmd())
	for _, c := range cmd.Commands() {
		c.Annotations = map[string]string{noContext: "true"}
	}
	return cmd
}

// contexts loads the contexts file.
func (a *app) contexts() (*ctxConfig, error) {
	path, err := a.ctlConfigPath()
	if err != nil {
		return nil, err
	}
	c, err := loadContexts(path)
	if err != nil {
		return nil, usageErrorf("%v", err)
	}
	return c, nil
}

// namedContext loads the contexts file, which must hold the context name.
func (a *app) namedContext(name string) (*ctxConfig, error) {
	c, err := a.contexts()
	if err != nil {
		return nil, err
	}
	if _, ok := c.contexts[name]; !ok {
		return nil, notFoundf("context %q: no such context in %s", name, c.path)
	}
	return c, nil
}

func (a *app) setContextCmd() *cobra.Command {
	var unset []string
	cmd := &cobra.Command{
		Use:   "set-context NAME [--socket PATH | --api ADDR ...] [--nats URL ...] [--unset KEY]",
		Short: "Create a context, or change the settings given of an existing one",
		Long: `Create the context NAME with the connection flags given, or, when it
exists, change those settings and keep the others; --unset KEY removes one
(KEY is a flag name without dashes: ` + keyNames() + `).
Setting --socket removes the TCP API keys and setting --api removes socket.`,
		Example: `  ctl config set-context web-1 --api web-1.example:7443 --ca ca.pem --token-file ~/.web-1.token
  ctl config set-context web-1 --nats tls://nats.example:4222 --nats-creds ~/.web-1.creds
  ctl config set-context web-1 --unset nats-creds`,
		Args:              exactArgs(1, "a context NAME"),
		ValidArgsFunction: a.completeContexts,
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := checkContextName(name); err != nil {
				return usageErrorf("%v", err)
			}
			if cmd.Flags().Changed("socket") && cmd.Flags().Changed("api") {
				return usageErrorf("context %q: give --socket or --api, not both", name)
			}
			c, err := a.contexts()
			if err != nil {
				return err
			}
			settings, existed := c.contexts[name]
			if !existed {
				settings = map[string]string{}
			}
			for _, k := range unset {
				if _, ok := lookupKey(k); !ok {
					return usageErrorf("--unset %q: unknown key (known: %s)", k, keyNames())
				}
				delete(settings, k)
			}
			changed := false
			for _, k := range contextKeys {
				f := cmd.Flags().Lookup(k.name)
				if f == nil || !f.Changed {
					continue
				}
				v := f.Value.String()
				if err := checkContextValue(name, k.name, v); err != nil {
					return usageErrorf("--%s: %v", k.name, err)
				}
				if k.path {
					if v, err = filepath.Abs(v); err != nil {
						return usageErrorf("--%s: %v", k.name, err)
					}
				}
				settings[k.name] = v
				changed = true
				switch k.name {
				case "socket":
					for _, o := range []string{"api", "tls", "ca", "cert", "key", "token-file"} {
						if !cmd.Flags().Changed(o) {
							delete(settings, o)
						}
					}
				case "api":
					delete(settings, "socket")
				}
			}
			if !changed && len(unset) == 0 && existed {
				return usageErrorf("nothing to change: give connection flags or --unset")
			}
			c.contexts[name] = settings
			if err := c.save(); err != nil {
				return err
			}
			verb := "created"
			if existed {
				verb = "modified"
			}
			fmt.Fprintf(a.stdout, "Context %q %s in %s.\n", name, verb, c.path)
			return nil
		},
	}
	f := cmd.Flags()
	f.String("nats", "", "NATS URL of ctl fleet")
	f.String("nats-creds", "", "NATS credentials file")
	f.String("nats-token-file", "", "file holding the NATS token")
	f.String("nats-ca", "", "PEM CA bundle of the NATS servers")
	f.StringSliceVar(&unset, "unset", nil, "remove this key from the context (repeatable)")
	return cmd
}

func (a *app) useContextCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "use-context NAME",
		Short:             "Make NAME the current context",
		Example:           "  ctl config use-context web-1\n  ctl ls    # on web-1",
		Args:              exactArgs(1, "a context NAME"),
		ValidArgsFunction: a.completeContexts,
		RunE: func(_ *cobra.Command, args []string) error {
			c, err := a.namedContext(args[0])
			if err != nil {
				return err
			}
			c.current = args[0]
			if err := c.save(); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Switched to context %q.\n", args[0])
			return nil
		},
	}
}

// contextJSON is one context in ctl config get-contexts -o json.
type contextJSON struct {
	Name     string            `json:"name"`
	Current  bool              `json:"current"`
	Settings map[string]string `json:"settings"`
}

func (a *app) getContextsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "get-contexts",
		Short: "List the contexts, * marking the current one",
		Example: `  ctl config get-contexts
  ctl config get-contexts -o json | jq -r .currentContext`,
		Long: `List the contexts: CURRENT (* on the current one), NAME, DAEMON (the
socket or the TCP API; "-" for the default socket) and NATS. -o json prints
one document: {"file", "currentContext", "contexts": [{"name", "current",
"settings": {key: value}}]}.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			c, err := a.contexts()
			if err != nil {
				return err
			}
			if a.json() {
				doc := struct {
					File     string        `json:"file"`
					Current  string        `json:"currentContext"`
					Contexts []contextJSON `json:"contexts"`
				}{File: c.path, Current: c.current, Contexts: []contextJSON{}}
				for _, n := range c.names() {
					doc.Contexts = append(doc.Contexts, contextJSON{Name: n, Current: n == c.current, Settings: c.contexts[n]})
				}
				return json.NewEncoder(a.stdout).Encode(doc)
			}
			t := newTable(a.stdout, a.noHeaders, "CURRENT", "NAME", "DAEMON", "NATS")
			for _, n := range c.names() {
				s := c.contexts[n]
				mark := " "
				if n == c.current {
					mark = "*"
				}
				daemon := s["socket"]
				if s["api"] != "" {
					daemon = s["api"]
				}
				t.row(mark, n, daemon, s["nats"])
			}
			return t.flush()
		},
	}
}

func (a *app) currentContextCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "current-context",
		Short:   "Print the current context's name",
		Example: `  ctl config current-context   # exit 3 when there is none`,
		Args:    cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			c, err := a.contexts()
			if err != nil {
				return err
			}
			if c.current == "" {
				return notFoundf("no current-context in %s (ctl config use-context NAME)", c.path)
			}
			fmt.Fprintln(a.stdout, c.current)
			return nil
		},
	}
}

func (a *app) deleteContextCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "delete-context NAME",
		Short:             "Delete a context (and the current-context, when it was that one)",
		Example:           "  ctl config delete-context web-1",
		Args:              exactArgs(1, "a context NAME"),
		ValidArgsFunction: a.completeContexts,
		RunE: func(_ *cobra.Command, args []string) error {
			name := args[0]
			c, err := a.namedContext(name)
			if err != nil {
				return err
			}
			delete(c.contexts, name)
			if c.current == name {
				c.current = ""
				a.note("%q was the current context: there is none now", name)
			}
			if err := c.save(); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Deleted context %q from %s.\n", name, c.path)
			return nil
		},
	}
}

// completeContexts completes a context name from the contexts file.
func (a *app) completeContexts(_ *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	path, err := a.ctlConfigPath()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	c, err := loadContexts(path)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []cobra.Completion
	for _, n := range c.names() {
		if !slices.Contains(args, n) && len(n) >= len(toComplete) && n[:len(toComplete)] == toComplete {
			desc := c.contexts[n]["api"]
			if desc == "" {
				desc = c.contexts[n]["socket"]
			}
			out = append(out, cobra.CompletionWithDesc(n, desc))
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// notFoundf is a NOT_FOUND error (exit 3) for a context that is not there.
func notFoundf(format string, args ...any) error {
	return status.Errorf(codes.NotFound, format, args...)
}
