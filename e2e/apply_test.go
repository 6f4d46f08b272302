package e2e

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestCtlApply(t *testing.T) {
	d := startDaemon(t, "--ephemeral")
	d.mustCtl("listen", "--port", "0", "--name", "extra")
	file := filepath.Join(t.TempDir(), "l.yaml")
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const web = "listeners:\n  web: {spec: {port: 0, handler: {echo: {}}, limits: {maxConnections: %s}}}\n  chat: {spec: {handler: {stream: {}}}}\n"
	write(strings.Replace(web, "%s", "10", 1))
	plan := "create chat\ncreate web\nkeep extra (not in file " + file + "; left alone without --prune)\n"

	if out := d.mustCtl("apply", "-f", file, "--dry-run"); out != plan {
		t.Fatalf("dry run printed:\n%s\nwant:\n%s", out, plan)
	}
	if ls := d.mustCtl("ls", "--no-headers"); strings.Count(ls, "\n") != 1 || !strings.Contains(ls, "extra") {
		t.Fatalf("a dry run changed something:\n%s", ls)
	}
	if out := d.mustCtl("apply", "-f", file); out != plan {
		t.Fatalf("apply printed:\n%s\nwant:\n%s", out, plan)
	}
	if ls := d.mustCtl("ls", "--no-headers"); strings.Count(ls, "\n") != 3 || !strings.Contains(ls, " web ") || !strings.Contains(ls, " chat ") {
		t.Fatalf("after apply:\n%s", ls)
	}

	// A limit changed, -o json: one document with the plan and outcomes.
	write(strings.Replace(web, "%s", "100", 1))
	out := d.mustCtl("apply", "-f", file, "-o", "json")
	var doc struct {
		DryRun  bool `json:"dryRun"`
		Changes []struct {
			Action, Name, ID, NewID, Error string
			Diff                           []string
		} `json:"changes"`
	}
	if strings.Count(out, "\n") != 1 || json.Unmarshal([]byte(out), &doc) != nil || doc.DryRun || len(doc.Changes) != 3 {
		t.Fatalf("-o json printed %q (%+v)", out, doc)
	}
	if c := doc.Changes[0]; c.Action != "update" || c.Name != "web" || strings.Join(c.Diff, ",") != "max_connections 10 -> 100" || c.Error != "" {
		t.Fatalf("first change %+v", c)
	}
	if got := d.mustCtl("get", "web", "-o", "json"); !strings.Contains(got, `"maxConnections":100`) {
		t.Fatalf("web not updated: %s", got)
	}

	// --prune closes what the file does not name.
	if out := d.mustCtl("apply", "-f", file, "--prune"); out != "close extra (not in file "+file+")\nunchanged chat\nunchanged web\n" {
		t.Fatalf("prune printed:\n%s", out)
	}
	if r := d.ctl("get", "extra"); r.code != 3 {
		t.Fatalf("extra after --prune: exit %d, %s", r.code, r.stdout)
	}

	// A change that fails is one line on stderr in ctl's words, and a
	// last line counts the failures; the others are made.
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	port := strconv.Itoa(held.Addr().(*net.TCPAddr).Port)
	write(strings.Replace(web, "%s", "100", 1) + "  busy: {spec: {host: 127.0.0.1, port: " + port + "}}\n  more: {spec: {port: 0}}\n")
	r := d.ctl("apply", "-f", file)
	lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
	if r.code != 1 || len(lines) != 2 || !strings.HasPrefix(lines[0], "ctl: create busy: address in use") ||
		strings.Contains(r.stderr, "rpc error") || lines[1] != "ctl: 1 of 4 changes failed" {
		t.Fatalf("a failed change: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if r := d.ctl("get", "more"); r.code != 0 {
		t.Fatalf("the change after a failed one was not made: exit %d, %s", r.code, r.stderr)
	}
	if r := d.ctl("apply", "-f", file, "--dry-run"); r.stderr != "ctl: dry run: nothing was changed\n" {
		t.Fatalf("a dry run said %q", r.stderr)
	}

	// A malformed file: exit 2, the place named, nothing changed.
	write("listeners:\n  web: {spec: {port: 1, limits: {maxConection: 5}}}\n")
	r = d.ctl("apply", "-f", file)
	if r.code != 2 || !strings.Contains(r.stderr, file+`:2:15: listener "web": spec: unknown field "maxConection"`) {
		t.Fatalf("malformed: exit %d, stderr %s", r.code, r.stderr)
	}
}

func TestDaemonListenersFileMalformedIsConfigError(t *testing.T) {
	file := filepath.Join(t.TempDir(), "l.yaml")
	if err := os.WriteFile(file, []byte("listeners:\n  web: {spec: {port: 1, limits: {maxConection: 5}}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	r := runBin(t, daemonBin, nil, "", "--ephemeral", "--socket", filepath.Join(dir, "s.sock"), "--listeners", file)
	if r.code != 2 || !strings.Contains(r.stderr, "--listeners: "+file+`:2:15: listener "web": spec: unknown field "maxConection"`) {
		t.Fatalf("exit %d, stderr %s", r.code, r.stderr)
	}
}
