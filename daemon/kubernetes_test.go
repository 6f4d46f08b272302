package main

import (
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/listenerd/listenerd/internal/declare"
)

// k8sObject holds the fields of contrib/kubernetes's manifests that the
// deployment depends on; the rest is left to the API server.
type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name      string            `yaml:"name"`
		Namespace string            `yaml:"namespace"`
		Labels    map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Data      map[string]string `yaml:"data"`
	Resources []string          `yaml:"resources"`
	Spec      struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec struct {
				HostNetwork                   bool        `yaml:"hostNetwork"`
				TerminationGracePeriodSeconds int         `yaml:"terminationGracePeriodSeconds"`
				Containers                    []k8sCont   `yaml:"containers"`
				Volumes                       []k8sVolume `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type k8sCont struct {
	Name           string    `yaml:"name"`
	Image          string    `yaml:"image"`
	Args           []string  `yaml:"args"`
	ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
	LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
	VolumeMounts   []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		SubPath   string `yaml:"subPath"`
	} `yaml:"volumeMounts"`
}

type k8sProbe struct {
	Exec *struct {
		Command []string `yaml:"command"`
	} `yaml:"exec"`
	TimeoutSeconds int `yaml:"timeoutSeconds"`
}

type k8sVolume struct {
	Name      string `yaml:"name"`
	ConfigMap *struct {
		Name string `yaml:"name"`
	} `yaml:"configMap"`
	HostPath *struct {
		Path string `yaml:"path"`
	} `yaml:"hostPath"`
}

// The manifests of contrib/kubernetes fit together and fit the daemon:
// the DaemonSet's args parse with the daemon's own flags, --listeners
// names the ConfigMap's key where the ConfigMap is mounted (as a directory,
// so updates are seen), the ConfigMap's listeners parse with the daemon's
// parser and pass the DaemonSet's --allow-ports, the listeners bind on the
// node (hostNetwork), the state survives the pod (hostPath), and the probes
// ask the daemon's socket with ctl status.
func TestKubernetesManifests(t *testing.T) {
	dir := filepath.Join("..", "contrib", "kubernetes")
	objs := map[string]k8sObject{}
	for _, f := range []string{"kustomization.yaml", "namespace.yaml", "configmap.yaml", "daemonset.yaml"} {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		var o k8sObject
		if err := yaml.Unmarshal(data, &o); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		objs[f] = o
	}
	want := map[string][2]string{
		"kustomization.yaml": {"kustomize.config.k8s.io/v1beta1", "Kustomization"},
		"namespace.yaml":     {"v1", "Namespace"},
		"configmap.yaml":     {"v1", "ConfigMap"},
		"daemonset.yaml":     {"apps/v1", "DaemonSet"},
	}
	for f, w := range want {
		if o := objs[f]; o.APIVersion != w[0] || o.Kind != w[1] {
			t.Errorf("%s: %s %s, want %s %s", f, o.APIVersion, o.Kind, w[0], w[1])
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".yaml") && e.Name() != "kustomization.yaml" && !slices.Contains(objs["kustomization.yaml"].Resources, e.Name()) {
			t.Errorf("kustomization.yaml does not list %s", e.Name())
		}
	}
	ns := objs["namespace.yaml"].Metadata.Name
	cm, ds := objs["configmap.yaml"], objs["daemonset.yaml"]
	for _, o := range []k8sObject{cm, ds} {
		if o.Metadata.Namespace != ns {
			t.Errorf("%s %s in namespace %q, want %q", o.Kind, o.Metadata.Name, o.Metadata.Namespace, ns)
		}
	}

	pod := ds.Spec.Template.Spec
	for k, v := range ds.Spec.Selector.MatchLabels {
		if pod := ds.Spec.Template.Metadata.Labels[k]; pod != v {
			t.Errorf("selector %s=%s does not match the pod's labels", k, v)
		}
	}
	if !pod.HostNetwork {
		t.Error("hostNetwork is not true: the listeners would bind in the pod's network")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	// The daemon reads --listeners at start: give it the ConfigMap's key
	// in a file of its own while the args are parsed.
	var listeners string
	args := slices.Clone(c.Args)
	for i, a := range args {
		if p, ok := strings.CutPrefix(a, "--listeners="); ok {
			listeners = p
			local := filepath.Join(t.TempDir(), path.Base(p))
			if err := os.WriteFile(local, []byte(cm.Data[path.Base(p)]), 0o600); err != nil {
				t.Fatal(err)
			}
			args[i] = "--listeners=" + local
		}
	}
	if listeners == "" {
		t.Fatalf("the DaemonSet's args %q have no --listeners=PATH", c.Args)
	}
	code, s, _, stderr := run(t, nil, args...)
	if code != 0 {
		t.Fatalf("the DaemonSet's args %q: exit %d: %s", c.Args, code, stderr)
	}
	s.cfg.Listeners = listeners
	if grace := time.Duration(pod.TerminationGracePeriodSeconds) * time.Second; grace <= s.cfg.ShutdownTimeout {
		t.Errorf("terminationGracePeriodSeconds %v is not longer than --shutdown-timeout %v", grace, s.cfg.ShutdownTimeout)
	}

	// mountOf is the volume mounted at the directory holding p.
	volumes := map[string]k8sVolume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	mountOf := func(flag, p string) (k8sVolume, string) {
		t.Helper()
		for _, m := range c.VolumeMounts {
			if m.MountPath == path.Dir(p) || m.MountPath == p {
				if m.SubPath != "" {
					t.Errorf("%s %s: mounted with subPath, which never sees updates", flag, p)
				}
				return volumes[m.Name], m.MountPath
			}
		}
		t.Errorf("%s %s: no volume mounted there", flag, p)
		return k8sVolume{}, ""
	}
	v, _ := mountOf("--listeners", s.cfg.Listeners)
	if v.ConfigMap == nil || v.ConfigMap.Name != cm.Metadata.Name {
		t.Errorf("--listeners %s is not in the ConfigMap %s's volume (%+v)", s.cfg.Listeners, cm.Metadata.Name, v)
	}
	key := path.Base(s.cfg.Listeners)
	data, ok := cm.Data[key]
	if !ok {
		t.Fatalf("the ConfigMap has no key %q (--listeners %s)", key, s.cfg.Listeners)
	}
	set, err := declare.Parse("configmap.yaml:"+key, []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Entries) == 0 {
		t.Error("the ConfigMap declares no listener")
	}
	for _, e := range set.Entries {
		ip, err := netip.ParseAddr(e.Spec.GetHost())
		if err != nil {
			t.Errorf("listener %q: host %q: %v", e.Name, e.Spec.GetHost(), err)
			continue
		}
		if err := s.cfg.Policy.Check(ip, uint16(e.Spec.GetPort())); err != nil {
			t.Errorf("listener %q: the DaemonSet's policy refuses it: %v", e.Name, err)
		}
	}
	if v, _ := mountOf("--state-dir", s.cfg.StateDir); v.HostPath == nil {
		t.Errorf("--state-dir %s is not on a hostPath: the saved specs would go with the pod", s.cfg.StateDir)
	}
	mountOf("--socket", s.cfg.Socket)

	for name, p := range map[string]*k8sProbe{"readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe} {
		if p == nil || p.Exec == nil {
			t.Errorf("%s: want an exec probe", name)
			continue
		}
		cmd := p.Exec.Command
		if len(cmd) == 0 || path.Base(cmd[0]) != "ctl" || cmd[len(cmd)-1] != "status" || !slices.Contains(cmd, "--socket="+s.cfg.Socket) {
			t.Errorf("%s: %q, want ctl --socket=%s ... status", name, cmd, s.cfg.Socket)
		}
		if p.TimeoutSeconds < 4 {
			t.Errorf("%s: timeoutSeconds %d, shorter than ctl's --timeout=3s and its start", name, p.TimeoutSeconds)
		}
	}
}

// The systemd drop-in of contrib/systemd sets variables the daemon takes,
// with values it accepts.
func TestSystemdFleetDropIn(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "contrib", "systemd", "fleet.conf"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	env := map[string]string{"LISTENERD_SOCKET": filepath.Join(dir, "api.sock"), "LISTENERD_STATE_DIR": dir}
	for _, line := range strings.Split(string(data), "\n") {
		kv, ok := strings.CutPrefix(line, "Environment=")
		if !ok {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	// The files it names, made here.
	for _, k := range []string{"LISTENERD_LISTENERS", "LISTENERD_NATS_CREDS"} {
		if env[k] == "" {
			t.Fatalf("the drop-in sets no %s", k)
		}
		local := filepath.Join(dir, path.Base(env[k]))
		content := "listeners:\n  web: {spec: {port: 8080}}\n"
		if k == "LISTENERD_NATS_CREDS" {
			content = "not read before the daemon connects\n"
		}
		if err := os.WriteFile(local, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		env[k] = local
	}
	code, s, _, stderr := run(t, env)
	if code != 0 {
		t.Fatalf("the drop-in's environment: exit %d: %s", code, stderr)
	}
	if s.cfg.Fleet.Host != "web-1" || !strings.HasPrefix(s.cfg.Fleet.URL, "tls://") || s.cfg.Fleet.Replicas != 3 || s.cfg.Listeners != env["LISTENERD_LISTENERS"] {
		t.Errorf("config %+v", s.cfg.Fleet)
	}
}
