package ctl

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
)

// completionTimeout bounds the daemon queries made while completing: a shell
// waiting on a dead daemon must not hang.
const completionTimeout = 2 * time.Second

const completionExample = `  source <(ctl completion bash)                         # this bash session
  ctl completion bash > /etc/bash_completion.d/ctl      # every bash session
  ctl completion zsh > "${fpath[1]}/_ctl"               # zsh
  ctl completion fish > ~/.config/fish/completions/ctl.fish
  ctl get <TAB>                                         # listener ids and names`

// completionNeeds is what bash completion needs that a fresh machine may
// not have.
const completionNeeds = `

TAB completion in bash needs the bash-completion package (on Debian and
Ubuntu: apt install bash-completion; macOS with Homebrew: brew install
bash-completion@2), loaded by the shell's startup files; without it, TAB
after source <(ctl completion bash) says "_get_comp_words_by_ref: command
not found".`

// addCompletions turns on cobra's completion command (ctl completion bash
// and the others) with examples, and completes arguments from the daemon:
// listener ids and names for the commands that take one, connection ids for
// kick, and the fixed words of some flags.
func (a *app) addCompletions(root *cobra.Command) {
	if a.stdout != nil {
		// The completion command takes its writer when it is made.
		root.SetOut(a.stdout)
	}
	root.InitDefaultCompletionCmd()
	root.InitDefaultHelpCmd()
	for _, c := range root.Commands() {
		switch c.Name() {
		case "completion":
			// Writing the script needs no daemon, nor a readable contexts file.
			c.Annotations = map[string]string{noContext: "true"}
			c.Long = strings.TrimRight(c.Long, "\n") + completionNeeds
			c.Example = completionExample
			for _, sh := range c.Commands() {
				if sh.Example == "" {
					sh.Example = fmt.Sprintf("  ctl completion %s --help   # how to install it\n  ctl completion %s > ctl.%s", sh.Name(), sh.Name(), sh.Name())
				}
			}
		case "help":
			c.Example = "  ctl help listen\n  ctl listen --help   # the same"
		case "get", "close", "conns":
			c.ValidArgsFunction = a.completeListeners(1, nil)
		case "limit", "attach", "serve":
			c.ValidArgsFunction = a.completeListeners(1, func(s listenerdv1.State) bool { return s == listenerdv1.State_STATE_LISTENING })
		case "rebind":
			c.ValidArgsFunction = a.completeListeners(1, func(s listenerdv1.State) bool { return s == listenerdv1.State_STATE_FAILED })
		case "watch":
			c.ValidArgsFunction = a.completeListeners(-1, nil)
		case "kick":
			c.ValidArgsFunction = a.completeConnections
		case "ls", "listen", "connect":
			c.ValidArgsFunction = cobra.NoFileCompletions
		}
	}
	words := func(ws ...cobra.Completion) cobra.CompletionFunc {
		return cobra.FixedCompletions(ws, cobra.ShellCompDirectiveNoFileComp)
	}
	_ = root.RegisterFlagCompletionFunc("output", words(outputText, outputWide, outputJSON))
	_ = root.RegisterFlagCompletionFunc("context", a.completeContexts)
	for _, c := range root.Commands() {
		switch c.Name() {
		case "listen":
			_ = c.RegisterFlagCompletionFunc("mode", words(modeChoices().completions()...))
			_ = c.RegisterFlagCompletionFunc("overflow", words(overflowChoices().completions()...))
		case "limit":
			_ = c.RegisterFlagCompletionFunc("overflow", words(overflowChoices().completions()...))
		case "watch":
			_ = c.RegisterFlagCompletionFunc("kind", words(kindWords()...))
		}
	}
}

// completeListeners completes listener ids and names, with the address and
// state as the description. nargs is how many arguments the command takes
// (-1: any number); keep, when set, picks the states worth offering.
func (a *app) completeListeners(nargs int, keep func(listenerdv1.State) bool) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if nargs >= 0 && len(args) >= nargs {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		if a.useContext(cmd) != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ls := a.completionListeners(cmd.Context())
		var out []cobra.Completion
		for _, l := range ls {
			if keep != nil && !keep(l.GetStatus().GetState()) {
				continue
			}
			desc := fmt.Sprintf("%s %s", address(l), stateWord(l.GetStatus().GetState()))
			for _, word := range []string{l.GetId(), l.GetName()} {
				if word == "" || !strings.HasPrefix(word, toComplete) || slices.Contains(args, word) {
					continue
				}
				out = append(out, cobra.CompletionWithDesc(word, desc))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeConnections completes a connection id for kick: first a listener
// id followed by a dot, then, once the dot is typed, that listener's open
// connections.
func (a *app) completeConnections(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 || a.useContext(cmd) != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	if i := strings.LastIndexByte(toComplete, '.'); i > 0 {
		client, err := a.dial()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(contextOf(cmd), completionTimeout)
		defer cancel()
		resp, err := client.ListConnections(ctx, &listenerdv1.ListConnectionsRequest{ListenerId: toComplete[:i]})
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, c := range resp.GetConnections() {
			if strings.HasPrefix(c.GetId(), toComplete) {
				out = append(out, cobra.CompletionWithDesc(c.GetId(), remote(c.GetTuple())))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
	var out []cobra.Completion
	for _, l := range a.completionListeners(cmd.Context()) {
		if n := l.GetStatus().GetActiveConnections(); n > 0 && strings.HasPrefix(l.GetId(), toComplete) {
			out = append(out, cobra.CompletionWithDesc(l.GetId()+".", fmt.Sprintf("%s, %s open", address(l), plural(n, "connection"))))
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace
}

// completionListeners lists the daemon's listeners, or nothing when it
// cannot be asked: completion never prints an error.
func (a *app) completionListeners(ctx context.Context) []*listenerdv1.Listener {
	client, err := a.dial()
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(contextOrBackground(ctx), completionTimeout)
	defer cancel()
	resp, err := client.ListListeners(ctx, &listenerdv1.ListListenersRequest{})
	if err != nil {
		return nil
	}
	return resp.GetListeners()
}

func contextOf(cmd *cobra.Command) context.Context { return contextOrBackground(cmd.Context()) }

func contextOrBackground(ctx context.Context) context.Context {
	if ctx == nil {
		return context.Background()
	}
	return ctx
}
