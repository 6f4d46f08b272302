package server

import (
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/listenerd/listenerd/internal/testkit"
)

// A metrics address the endpoint refuses is a configuration error (the
// daemon exits 2); a taken port is the machine's (exit 1).
func TestRunMetricsAddressErrors(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, tc := range []struct {
		addr   string
		config bool
		want   string
	}{
		{":0", true, "every interface"},
		{"192.0.2.1:0", true, "not a loopback address"},
		{"no-such-host.invalid:0", true, "no-such-host.invalid"},
		{taken.Addr().String(), false, "address already in use"},
	} {
		dir := testkit.ShortDir(t)
		cfg := Config{Socket: filepath.Join(dir, "run", "listenerd.sock"), Ephemeral: true, Metrics: MetricsConfig{Addr: tc.addr}}
		err := Run(testContext(t), cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) || errors.Is(err, ErrConfig) != tc.config {
			t.Errorf("Run with --metrics %s: %v; want an error saying %q, a configuration error: %v", tc.addr, err, tc.want, tc.config)
		}
	}
}
