package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"

	"github.com/spf13/cobra"
)

// connectOptions holds the flags of ctl connect.
type connectOptions struct {
	// address is HOST:PORT; the host may be a name.
	address string
	// send is written instead of stdin when sendSet.
	send    string
	sendSet bool
	// once closes the connection after the first reply.
	once bool
}

func (a *app) connectCmd() *cobra.Command {
	var o connectOptions
	cmd := &cobra.Command{
		Use:   "connect HOST:PORT [--send TEXT] [--once]",
		Short: "Connect to a TCP address as a plain client (the daemon is not involved)",
		Long: `Connect to HOST:PORT like a Node.js net.Socket client, or nc: look the host
up (printing the addresses found), connect, print "CONNECTED TO:" and the
connection's five-tuple, send --send TEXT or else everything read from stdin,
and print what comes back. Nothing else needs installing to try a listener.

The bytes received go to stdout as they are; everything else goes to stderr,
so the output can be piped. When the input ends, connect half-closes its side
(FIN) and keeps reading until the server closes. --once closes after the first
reply instead, as a Node client calling client.destroy() on its first 'data'
event does. Ctrl-C closes and exits 0.`,
		Example: `  ctl connect 127.0.0.1:6969 --send 'I am Chuck Norris!' --once
  echo hello | ctl connect localhost:6969
  ctl connect [::1]:6969 < request.bin > reply.bin`,
		Args: exactArgs(1, "HOST:PORT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.address = args[0]
			o.sendSet = cmd.Flags().Changed("send")
			return connect(cmd.Context(), o, cmd.InOrStdin(), a.stdout, a.stderr)
		},
	}
	cmd.Flags().StringVar(&o.send, "send", "", "send this text instead of reading stdin")
	cmd.Flags().BoolVar(&o.once, "once", false, "close the connection after the first reply")
	return cmd
}

// connect is ctl connect: it dials o.address, reports the connection on
// stderr, sends the input and copies what comes back to stdout. It returns
// nil when the server closes, after the first reply with o.once, or when ctx
// is cancelled.
//
// Reading stdin cannot be interrupted: when the server closes first, a
// goroutine blocked reading stdin is left behind until stdin yields or the
// process exits. With --send nothing is left behind.
func connect(ctx context.Context, o connectOptions, stdin io.Reader, stdout, stderr io.Writer) error {
	host, port, err := net.SplitHostPort(o.address)
	if err != nil {
		return usageErrorf("bad address %q: want HOST:PORT", o.address)
	}
	if host == "" {
		host = "localhost" // like Node's socket.connect(port)
	}
	var r net.Resolver
	if _, err := r.LookupPort(ctx, "tcp", port); err != nil {
		return usageErrorf("bad port %q in %q", port, o.address)
	}

	var ips []string
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []string{ip.String()}
	} else {
		addrs, err := r.LookupIPAddr(ctx, host)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("cannot resolve %s: %v", host, lookupReason(err))
		}
		for _, a := range addrs {
			ips = append(ips, a.String())
		}
		fmt.Fprintf(stderr, "resolved %s to %s\n", host, strings.Join(ips, ", "))
	}

	var d net.Dialer
	var conn net.Conn
	for _, ip := range ips {
		if conn, err = d.DialContext(ctx, "tcp", net.JoinHostPort(ip, port)); err == nil {
			break
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("cannot connect to %s: %v", net.JoinHostPort(host, port), dialReason(err))
	}
	c := conn.(*net.TCPConn)
	defer c.Close()

	fmt.Fprintf(stderr, "CONNECTED TO: %s\n", net.JoinHostPort(host, port))
	la, ra := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
	fmt.Fprintf(stderr, "remoteAddress=%s remotePort=%d remoteFamily=%s localAddress=%s localPort=%d\n",
		ra.IP, ra.Port, ipFamily(ra.IP), la.IP, la.Port)

	stop := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stop()

	sent := make(chan error, 1)
	go func() { sent <- sendInput(c, o, stdin) }()

	var readErr error
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := stdout.Write(buf[:n]); werr != nil {
				readErr = werr
				break
			}
			if o.once {
				break
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				readErr = err
			}
			break
		}
	}
	_ = c.Close() // unblocks a writer stuck on a peer that does not read

	var inErr error
	if o.sendSet || stdin == nil {
		inErr = <-sent
	} else {
		select {
		case inErr = <-sent:
		default: // still blocked reading stdin; see the doc comment
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	fmt.Fprintln(stderr, "connection closed")
	if readErr != nil {
		return fmt.Errorf("connection to %s: %v", net.JoinHostPort(host, port), dialReason(readErr))
	}
	return inErr
}

// sendInput writes --send or stdin to c, then half-closes c unless once.
// Write errors are not reported: the read side reports a failed connection.
func sendInput(c *net.TCPConn, o connectOptions, stdin io.Reader) error {
	switch {
	case o.sendSet:
		if _, err := io.WriteString(c, o.send); err != nil {
			return nil
		}
	case stdin != nil:
		buf := make([]byte, 32<<10)
		for {
			n, err := stdin.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return nil
				}
			}
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return fmt.Errorf("reading stdin: %w", err)
			}
		}
	}
	if !o.once {
		_ = c.CloseWrite()
	}
	return nil
}

func ipFamily(ip net.IP) string {
	if ip.To4() != nil {
		return "IPv4"
	}
	return "IPv6"
}

// dialReason strips the "dial tcp 1.2.3.4:5: connect:" prefixes of a network
// error, leaving e.g. "connection refused".
func dialReason(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		err = op.Err
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

func lookupReason(err error) string {
	var dns *net.DNSError
	if errors.As(err, &dns) {
		if dns.IsNotFound {
			return "no such host"
		}
		return dns.Err
	}
	return err.Error()
}
