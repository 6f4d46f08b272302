package listener

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Policy is the daemon-wide rule on what a listener may bind, checked
// before every bind (create, rebind and restore). The zero Policy allows
// whatever the operating system allows.
type Policy struct {
	// Ports, when not empty, are the ports a spec may ask for. Port 0 (an
	// ephemeral port chosen by the kernel) is allowed only when a range
	// includes 0, since the kernel's choice cannot be known before binding.
	Ports []PortRange
	// Hosts, when not empty, are the addresses a listener may bind: a
	// specific address must lie in one of the prefixes, and a wildcard
	// address (0.0.0.0 or ::, every interface) must be listed as itself.
	// Host names are checked by the address they resolve to.
	Hosts []netip.Prefix
	// NoPrivileged refuses ports 1-1023 even when the process may bind
	// them (root or CAP_NET_BIND_SERVICE).
	NoPrivileged bool
}

// PortRange is an inclusive range of TCP ports.
type PortRange struct{ Lo, Hi uint16 }

func (r PortRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(int(r.Lo))
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
}

// PrivilegedPorts is the first port an unprivileged process may bind
// (Linux's default net.ipv4.ip_unprivileged_port_start).
const PrivilegedPorts = 1024

// PolicyError is a spec field the daemon's policy refuses. It unwraps to
// ErrPermission, so it answers PERMISSION_DENIED, and its message starts
// with the field.
type PolicyError struct {
	Field string // "spec.port" or "spec.host"
	Msg   string
}

func (e *PolicyError) Error() string { return e.Field + ": " + e.Msg }

// Unwrap makes errors.Is(err, ErrPermission) true.
func (e *PolicyError) Unwrap() error { return ErrPermission }

// Check says whether a listener may bind ip and port: nil, or a
// *PolicyError naming the field.
func (p Policy) Check(ip netip.Addr, port uint16) error {
	if p.NoPrivileged && port != 0 && port < PrivilegedPorts {
		return &PolicyError{Field: "spec.port", Msg: fmt.Sprintf("port %d is privileged (below %d) and this daemon allows no privileged ports", port, PrivilegedPorts)}
	}
	if len(p.Ports) > 0 && !slices.ContainsFunc(p.Ports, func(r PortRange) bool { return r.Lo <= port && port <= r.Hi }) {
		what := fmt.Sprintf("port %d", port)
		if port == 0 {
			what = "port 0 (ephemeral)"
		}
		return &PolicyError{Field: "spec.port", Msg: fmt.Sprintf("%s is not among the ports this daemon allows (%s)", what, joinStrings(p.Ports))}
	}
	if len(p.Hosts) > 0 && !p.hostAllowed(ip) {
		what := ip.String()
		if ip.IsUnspecified() {
			what += " (every interface)"
		}
		return &PolicyError{Field: "spec.host", Msg: fmt.Sprintf("%s is not among the addresses this daemon allows (%s)", what, joinStrings(p.Hosts))}
	}
	return nil
}

func (p Policy) hostAllowed(ip netip.Addr) bool {
	for _, a := range []netip.Addr{ip, ip.Unmap()} {
		for _, pfx := range p.Hosts {
			if a.IsUnspecified() {
				// A wildcard binds every interface: only its own entry allows it.
				if pfx.IsSingleIP() && pfx.Addr() == a {
					return true
				}
				continue
			}
			if pfx.Contains(a) {
				return true
			}
		}
	}
	return false
}

// String describes the policy for a log line.
func (p Policy) String() string {
	var parts []string
	if len(p.Ports) > 0 {
		parts = append(parts, "ports "+joinStrings(p.Ports))
	}
	if len(p.Hosts) > 0 {
		parts = append(parts, "hosts "+joinStrings(p.Hosts))
	}
	if p.NoPrivileged {
		parts = append(parts, "no privileged ports")
	}
	if len(parts) == 0 {
		return "any"
	}
	return strings.Join(parts, "; ")
}

// ParsePorts parses a comma-separated list of ports and inclusive ranges,
// such as "8000-8999" or "0,1024-65535". Empty means no restriction.
func ParsePorts(s string) ([]PortRange, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []PortRange
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		lo, hi, isRange := strings.Cut(item, "-")
		l, err := parsePort(lo)
		if err != nil {
			return nil, fmt.Errorf("port range %q: %w", item, err)
		}
		h := l
		if isRange {
			if h, err = parsePort(hi); err != nil {
				return nil, fmt.Errorf("port range %q: %w", item, err)
			}
		}
		if l > h {
			return nil, fmt.Errorf("port range %q: %d is above %d", item, l, h)
		}
		out = append(out, PortRange{Lo: l, Hi: h})
	}
	return out, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil {
		return 0, fmt.Errorf("%q is not a port (0-65535)", s)
	}
	return uint16(n), nil
}

// ParseHosts parses a comma-separated list of IP addresses and CIDR
// prefixes, such as "127.0.0.1,::1,10.0.0.0/8". A bare address stands for
// itself; "0.0.0.0" and "::" allow the wildcard. Empty means no
// restriction.
func ParseHosts(s string) ([]netip.Prefix, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []netip.Prefix
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if strings.Contains(item, "/") {
			p, err := netip.ParsePrefix(item)
			if err != nil {
				return nil, fmt.Errorf("host %q: not a CIDR prefix: %v", item, err)
			}
			if err := CheckNetwork(p); err != nil {
				return nil, fmt.Errorf("host %w", err)
			}
			out = append(out, p)
			continue
		}
		a, err := netip.ParseAddr(item)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("host %q: want an IP address or a CIDR prefix", item)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// CheckNetwork refuses a prefix with host bits set ("10.1.2.3/8"), naming
// the network it probably meant and the host it may have meant instead:
// masking it quietly would keep another rule than the one written.
func CheckNetwork(p netip.Prefix) error {
	if m := p.Masked(); m != p {
		return fmt.Errorf("%q has host bits set: did you mean the network %s (or %s, that one host)?",
			p.String(), m, netip.PrefixFrom(p.Addr(), p.Addr().BitLen()))
	}
	return nil
}

func joinStrings[T fmt.Stringer](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = x.String()
	}
	return strings.Join(s, ", ")
}
