// Command k8scheck decodes the Kubernetes manifests of contrib/kubernetes
// strictly into the k8s.io/api types, so that a misspelt or mistyped field
// fails without a cluster: go run . ../../contrib/kubernetes (make
// k8scheck). It is a module of its own to keep k8s.io/api out of
// listenerd's go.mod.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: k8scheck DIR")
		os.Exit(2)
	}
	failed := false
	for _, m := range []struct {
		file string
		into any
	}{
		{"namespace.yaml", &corev1.Namespace{}},
		{"configmap.yaml", &corev1.ConfigMap{}},
		{"daemonset.yaml", &appsv1.DaemonSet{}},
	} {
		file, into := m.file, m.into
		data, err := os.ReadFile(filepath.Join(os.Args[1], file))
		if err == nil {
			err = yaml.UnmarshalStrict(data, into)
		}
		if err != nil {
			fmt.Printf("%s: %v\n", file, err)
			failed = true
			continue
		}
		fmt.Printf("%s: ok (%T)\n", file, into)
	}
	if failed {
		os.Exit(1)
	}
}
