package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/listenerd/listenerd/internal/config"
	"github.com/listenerd/listenerd/internal/declare"
	"github.com/listenerd/listenerd/internal/metrics"
	"github.com/listenerd/listenerd/internal/server"
	"github.com/listenerd/listenerd/internal/version"
)

// envPrefix is the prefix of the daemon's environment variables:
// LISTENERD_SHUTDOWN_TIMEOUT sets --shutdown-timeout.
const envPrefix = "LISTENERD"

// execute runs the command line args and returns the exit code: 0; 2 for
// a mistake in the configuration, found before serving or by serve
// (server.ErrConfig); 1 when serving failed. lookupEnv reads the
// environment (os.LookupEnv); serve runs the daemon on the settings.
func execute(args []string, stdout, stderr io.Writer, lookupEnv func(string) (string, bool), serve func(*settings) error) int {
	var s settings
	var eff *config.Effective
	serving := false
	root := &cobra.Command{
		Use:   "listenerd",
		Short: "Hosts raw TCP listeners controlled over gRPC (see ctl)",
		Long: "listenerd hosts raw TCP listeners controlled over gRPC (see ctl).\n\n" +
			"Every flag may also be set in the environment as LISTENERD_<FLAG>, upper case, dashes as\n" +
			"underscores (LISTENERD_SHUTDOWN_TIMEOUT=5s), or in the YAML file of --config (shutdown-timeout: 5s).\n" +
			"A flag wins over the environment, which wins over the file. listenerd config prints the result.",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unexpected arguments: %v", args)
			}
			return nil
		},
		Version:           version.Get().String(),
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			eff, err = resolve(cmd.Flags(), &s, lookupEnv)
			return err
		},
		RunE: func(*cobra.Command, []string) error {
			serving = true
			return serve(&s)
		},
	}
	root.SetVersionTemplate("listenerd {{.Version}}\n")
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetArgs(args)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return config.FlagError(cmd.Flags(), err) })
	pf := root.PersistentFlags()
	pf.SortFlags = false
	declareFlags(pf, &s)
	root.Flags().SortFlags = false // --help lists them as declared
	configCmd := &cobra.Command{
		Use:   "config",
		Short: "Print the configuration in force, as YAML, with where each value comes from",
		Long: "Print the configuration that the same flags, environment and file give listenerd, as a YAML\n" +
			"file that --config reads back. A comment after each key says where its value comes from: flag,\n" +
			"env (the variable), file (path:line:column) or default. Secret values are masked.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			header := "listenerd's configuration: flag > environment (LISTENERD_*) > file > default\n"
			if eff.File != "" {
				header += "config file: " + eff.File + "\n"
			}
			return eff.WriteYAML(cmd.OutOrStdout(), header)
		},
	}
	configCmd.Flags().SortFlags = false
	root.AddCommand(configCmd)
	err := root.Execute()
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "listenerd: %v\n", err)
	if !serving || errors.Is(err, server.ErrConfig) {
		return 2
	}
	return 1
}

// resolve completes the settings from the environment and the file, then
// checks them, as the server would, so that a mistake is found before
// anything starts. An error about a value from the environment or the
// file says which.
func resolve(fs *pflag.FlagSet, s *settings, lookupEnv func(string) (string, bool)) (*config.Effective, error) {
	eff, err := config.Resolve(fs, envPrefix, "config", lookupEnv)
	if err != nil {
		return nil, err
	}
	if s.cfg.Policy, err = server.ParsePolicy(s.ports, s.hosts, s.allowPrivileged); err != nil {
		return nil, eff.Explain(err)
	}
	if s.cfg.Metrics.Addr != "" {
		if err := metrics.CheckAddr(s.cfg.Metrics.Addr, s.cfg.Metrics.AllowRemote); err != nil {
			return nil, eff.Explain(fmt.Errorf("--metrics: %w", err))
		}
	}
	if err := s.cfg.Check(); err != nil {
		return nil, eff.Explain(err)
	}
	if s.cfg.Listeners != "" {
		if _, err := declare.ReadFile(s.cfg.Listeners); err != nil {
			return nil, eff.Explain(fmt.Errorf("--listeners: %w", err))
		}
	}
	return eff, nil
}
