package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
)

// median of the values that are not NaN; NaN if there are none.
func median(vs []float64) float64 {
	var s []float64
	for _, v := range vs {
		if !math.IsNaN(v) {
			s = append(s, v)
		}
	}
	if len(s) == 0 {
		return math.NaN()
	}
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// ratios returns num[i]/den[i] for every repetition where both were
// measured.
func ratios(num, den []float64) []float64 {
	out := make([]float64, len(num))
	for i := range num {
		out[i] = num[i] / den[i]
		if den[i] == 0 {
			out[i] = math.NaN()
		}
	}
	return out
}

// order of the rows.
var metricOrder = []string{"a", "b", "c", "d50", "d99", "e", "f", "g", "h", "i", "i50", "j", "jd", "jh", "k"}

// report prints the table: medians per column and the median of the
// per-repetition ratios, against the targets.
func (b *bench) report() {
	tw := tabwriter.NewWriter(b.out, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "case\twhat\tunit\tlistenerd\tbaseline\tnode\tratio\ttarget\tmet\tnode ratio\tbaseline is")
	for _, key := range metricOrder {
		m := b.metrics[key]
		if !b.has(key[0]) {
			continue
		}
		d, base, nd := median(m.vals[colDaemon]), median(m.vals[colBase]), median(m.vals[colNode])
		r := median(ratios(m.vals[colDaemon], m.vals[colBase]))
		nr := median(ratios(m.vals[colDaemon], m.vals[colNode]))
		target, met := "-", "-"
		switch {
		case m.target == 0:
		case m.absTarget:
			target = fmt.Sprintf("<= %.0f %s", m.target, m.unit)
			met = yesNo(d <= m.target, d)
		case m.higher:
			target = fmt.Sprintf(">= %.2fx", m.target)
			met = yesNo(r >= m.target, r)
		default:
			target = fmt.Sprintf("<= %.2gx", m.target)
			met = yesNo(r <= m.target, r)
		}
		nodeCol, nodeRatio := num(nd), ratio(nr)
		if m.noNode {
			nodeCol, nodeRatio = "-", "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			key, m.label, m.unit, num(d), num(base), nodeCol, ratio(r), target, met, nodeRatio, m.baseIs)
	}
	tw.Flush()

	// Server CPU per operation: on a shared 2-core machine it moves less
	// than throughput does, and says where the time goes.
	fmt.Fprintln(b.out)
	var rows []string
	for _, key := range metricOrder {
		m := b.metrics[key]
		if !b.has(key[0]) || m.cpuUnit == "" {
			continue
		}
		nodeCol := num(median(m.cpu[colNode]))
		if m.noNode {
			nodeCol = "-"
		}
		rows = append(rows, fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\n", key, m.cpuUnit, num(median(m.cpu[colDaemon])),
			num(median(m.cpu[colBase])), nodeCol, ratio(median(ratios(m.cpu[colDaemon], m.cpu[colBase])))))
	}
	if len(rows) > 0 {
		fmt.Fprintln(b.out, "server CPU (user+system of the server process, from /proc/PID/stat, 10 ms ticks), median:")
		tw = tabwriter.NewWriter(b.out, 2, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "case\tunit\tlistenerd\tbaseline\tnode\tratio")
		for _, r := range rows {
			fmt.Fprint(tw, r)
		}
		tw.Flush()
		fmt.Fprintln(b.out)
	}
	if c := b.metrics["c"]; b.has('c') {
		var rows []string
		for _, fp := range forwardPeers {
			if v := median(c.vals[fp.col]); !math.IsNaN(v) {
				rows = append(rows, fmt.Sprintf("%s\t%s\t%s\t%s\n", fp.col, num(v),
					num(median(c.cpu[fp.col])), ratio(median(ratios(c.vals[colDaemon], c.vals[fp.col])))))
			}
		}
		if len(rows) > 0 {
			fmt.Fprintln(b.out, "c: forwarders users pick instead, in the same runs (no target; ratio is listenerd / peer):")
			tw := tabwriter.NewWriter(b.out, 2, 8, 2, ' ', 0)
			fmt.Fprintln(tw, "peer\tMiB/s\tms/GiB\tratio")
			for _, r := range rows {
				fmt.Fprint(tw, r)
			}
			tw.Flush()
			fmt.Fprintln(b.out)
		}
	}
	if f := b.metrics["f"]; b.has('f') {
		rpc, bare, raw := median(f.aux["rpc"]), median(f.aux["bare"]), median(f.vals[colBase])
		fmt.Fprintf(b.out, "f: CreateListener %s µs, CloseListener %s µs; a no-op RPC (health check) %s µs on the daemon,\n"+
			"   %s µs on a bare grpc-go server in its own process: two RPCs alone are %s the raw net.Listen+Close\n"+
			"   on the daemon, %s on the bare server (medians)\n\n",
			num(median(f.aux["create"])), num(median(f.aux["close"])), num(rpc), num(bare), ratio(2*rpc/raw), ratio(2*bare/raw))
		saved, savedRaw := median(f.aux["saved"]), median(f.aux["savedRaw"])
		fmt.Fprintf(b.out, "f, state saved (the daemon's default; the row above is --ephemeral): CreateListener+CloseListener\n"+
			"   %s µs against %s µs for net.Listen+Close, %s; each change waits for its write, fsync and rename\n\n",
			num(saved), num(savedRaw), ratio(saved/savedRaw))
	}
	if b.has('h') || b.has('i') {
		var parts []string
		first, second, whose := "daemon", "handler", "the daemon's and the Go stream handler's"
		if b.cfg.floor {
			first, second, whose = "relay", "echo", "the floor's relay's and relayecho's"
		}
		for _, key := range []string{"h", "i", "i50"} {
			if m := b.metrics[key]; b.has(key[0]) {
				parts = append(parts, fmt.Sprintf("%s %s %s + %s %s %s", key,
					first, num(median(m.aux["daemonCPU"])), second, num(median(m.aux["handlerCPU"])), m.cpuUnit))
			}
		}
		fmt.Fprintf(b.out, "h, i: listenerd's server CPU is %s together (medians): %s\n\n",
			whose, strings.Join(parts, "; "))
	}
	if b.cfg.quick {
		fmt.Fprintln(b.out, "--quick: tiny sizes, one repetition; the numbers above prove the bench runs, not how fast anything is")
	}
}

func yesNo(ok bool, v float64) string {
	switch {
	case math.IsNaN(v):
		return "?"
	case ok:
		return "yes"
	default:
		return "NO"
	}
}

func num(v float64) string {
	switch {
	case math.IsNaN(v):
		return "n/a"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func ratio(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", v)
}
