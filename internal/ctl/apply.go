package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	listenerdv1 "github.com/listenerd/listenerd/api/listenerd/v1"
	"github.com/listenerd/listenerd/internal/declare"
)

func (a *app) applyCmd() *cobra.Command {
	var file string
	var dryRun, prune bool
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Make a listeners file true through the API (create, update, rebind, close)",
		Long: `Make a declared-listeners file (the format of the daemon's --listeners, see the
README's "Declared listeners") true through the API, as kubectl apply does.
ctl prints the plan first, one line a listener:

  create web                                  missing: created
  update web: max_connections 10 -> 100        limits: changed in place
  rebind web: port 8080 -> 8081 (...)          a new socket: closed, created again
  close old (not in file l.yaml)               only with --prune
  unchanged chat
  keep old (...; left alone without --prune)

then carries it out: closes first, then rebinds, updates and creates, many at
once. --dry-run stops after the plan. Without --prune the listeners the file
does not name are left alone; with it they are closed (draining for the
file's drainTimeout). -o json prints the plan and each change's outcome as
one JSON document. A change that fails is reported on stderr and the others
go on; the exit code is then that of the first failure.

Listeners the daemon's own --listeners file declares are put back by its
next reconcile if this changes them.`,
		Example: `  ctl apply -f contrib/listeners.yaml --dry-run
  ctl apply -f listeners.yaml
  ctl apply -f listeners.yaml --prune -o json | jq '.changes[] | select(.error)'`,
		Args: exactArgs(0, "no arguments (the file is -f FILE)"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return usageErrorf("-f FILE is required")
			}
			set, err := declare.ReadFile(file)
			if err != nil {
				return usageErrorf("%v", err)
			}
			client, ctx, cancel, err := a.call(cmd.Context())
			if err != nil {
				return err
			}
			resp, err := client.ListListeners(ctx, &listenerdv1.ListListenersRequest{})
			cancel()
			if err != nil {
				return err
			}
			plan := declare.Plan(resp.GetListeners(), set, declare.Options{Prune: prune, Others: true})
			if !a.json() {
				for _, c := range plan {
					fmt.Fprintln(a.stdout, c.String())
				}
			}
			var results []declare.Result
			if dryRun && !a.json() {
				a.note("dry run: nothing was changed")
			}
			if !dryRun {
				t := &apiTarget{a: a, c: client}
				results = declare.Apply(cmd.Context(), t, plan, declare.DefaultParallel, func(r declare.Result) {
					if r.Err != nil && !a.json() {
						msg, _ := a.describe(r.Err)
						a.note("%s %s: %s", r.Action, r.Name, msg)
					}
				})
			}
			var first error
			failed := 0
			for _, r := range results {
				if r.Err != nil && first == nil {
					first = r.Err
				}
				if r.Err != nil {
					failed++
				}
			}
			if a.json() {
				if err := writeApplyJSON(a, plan, results, dryRun); err != nil {
					return err
				}
			}
			if first != nil {
				_, code := a.describe(first)
				return &messageError{code: code, msg: fmt.Sprintf("%d of %d changes failed", failed, len(plan))}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", "the listeners file (YAML; see the README's Declared listeners)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the plan and change nothing")
	cmd.Flags().BoolVar(&prune, "prune", false, "close the listeners the file does not name")
	return cmd
}

// applyJSON is ctl apply's -o json document.
type applyJSON struct {
	DryRun  bool         `json:"dryRun"`
	Changes []changeJSON `json:"changes"`
}

type changeJSON struct {
	declare.Change
	NewID string `json:"newId,omitempty"`
	Error string `json:"error,omitempty"`
}

func writeApplyJSON(a *app, plan []declare.Change, results []declare.Result, dryRun bool) error {
	doc := applyJSON{DryRun: dryRun, Changes: make([]changeJSON, len(plan))}
	for i, c := range plan {
		doc.Changes[i].Change = c
		if results != nil {
			doc.Changes[i].NewID = results[i].NewID
			if results[i].Err != nil {
				doc.Changes[i].Error = results[i].Err.Error()
			}
		}
	}
	enc := json.NewEncoder(a.stdout)
	enc.SetEscapeHTML(false) // "port 80 -> 8080", not "-\u003e"
	return enc.Encode(doc)
}

// apiTarget carries a plan out through the API.
type apiTarget struct {
	a *app
	c listenerdv1.ListenerServiceClient
}

func (t *apiTarget) Create(ctx context.Context, name string, spec *listenerdv1.ListenerSpec) (string, error) {
	var resp *listenerdv1.CreateListenerResponse
	err := t.paced(ctx, func(ctx context.Context) (err error) {
		resp, err = t.c.CreateListener(ctx, &listenerdv1.CreateListenerRequest{Name: name, Spec: spec})
		return err
	})
	return resp.GetListener().GetId(), err
}

// paced makes one call (--timeout each try), and tries again while the
// daemon refuses it for its mutation rate limit (--api-rate), waiting
// 20 ms, doubling up to 1 s: a large file is applied at the rate the
// daemon allows, not refused.
func (t *apiTarget) paced(ctx context.Context, call func(context.Context) error) error {
	wait := 20 * time.Millisecond
	for try := 0; ; try++ {
		cctx, cancel := t.a.unary(ctx)
		err := call(cctx)
		cancel()
		if err == nil || try >= 200 || !rateLimited(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// rateLimited reports whether err is the daemon's RATE_LIMITED refusal.
func rateLimited(err error) bool {
	st, ok := grpcStatus(err)
	if !ok || st.Code() != codes.ResourceExhausted {
		return false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == "RATE_LIMITED" {
			return true
		}
	}
	return false
}

func (t *apiTarget) Update(ctx context.Context, id string, spec *listenerdv1.ListenerSpec, limits bool) error {
	if !limits {
		return nil // only the daemon's own reconcile declares
	}
	return t.paced(ctx, func(ctx context.Context) error {
		_, err := t.c.UpdateListener(ctx, &listenerdv1.UpdateListenerRequest{
			Listener:   &listenerdv1.Listener{Id: id, Spec: &listenerdv1.ListenerSpec{Limits: spec.GetLimits()}},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"spec.limits"}},
		})
		return err
	})
}

// Rebind closes the listener (its name is free at once) and creates it
// again.
func (t *apiTarget) Rebind(ctx context.Context, id string, spec *listenerdv1.ListenerSpec, drain time.Duration) (string, error) {
	resp, err := t.close(ctx, id, drain)
	if err != nil {
		return "", err
	}
	id, err = t.Create(ctx, resp.GetListener().GetName(), spec)
	if err != nil {
		return "", fmt.Errorf("closed, and not created again: %w", err)
	}
	return id, nil
}

func (t *apiTarget) Close(ctx context.Context, id string, drain time.Duration) error {
	_, err := t.close(ctx, id, drain)
	return err
}

func (t *apiTarget) close(ctx context.Context, id string, drain time.Duration) (*listenerdv1.CloseListenerResponse, error) {
	if id == "" {
		return nil, errors.New("no listener id")
	}
	var resp *listenerdv1.CloseListenerResponse
	err := t.paced(ctx, func(ctx context.Context) (err error) {
		resp, err = t.c.CloseListener(ctx, &listenerdv1.CloseListenerRequest{Id: id, DrainTimeout: durationpb.New(drain)})
		return err
	})
	return resp, err
}
