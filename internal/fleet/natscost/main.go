// Command natscost measures the JetStream server's CPU per published
// event for ways of publishing like the fleet publisher's (BENCHMARKS.md,
// "Fleet events: the JetStream server's CPU per event"). For each variant
// and repetition it starts a nats-server (this program with -server, a
// child process with a fresh store), creates the stream as the publisher
// does (fleet.Options.StreamConfig, changed as the variant says), publishes
// -n events of about 300 bytes in bursts of -burst every -linger, waits for
// every ack, checks the stream holds them, and reads the child's CPU from
// /proc/PID/stat (10 ms ticks) before and after. Linux only; a measuring
// tool, not a test.
//
//	go run ./internal/fleet/natscost -reps 5 -variants a,b,c,c1,d,e,f
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/listenerd/listenerd/internal/events"
	"github.com/listenerd/listenerd/internal/fleet"
	"github.com/listenerd/listenerd/internal/fleet/natstest"
	"github.com/listenerd/listenerd/internal/service"
)

var (
	serverMode = flag.Bool("server", false, "run the server (child)")
	storeDir   = flag.String("store", "", "server store dir")
	syncIvl    = flag.Duration("sync", 0, "server sync interval (0 default)")
	syncAlways = flag.Bool("syncalways", false, "")
	cpuprof    = flag.String("cpuprofile", "", "server: write a CPU profile")

	n        = flag.Int("n", 100000, "messages")
	burst    = flag.Int("burst", 150, "messages per batch")
	linger   = flag.Duration("linger", 5*time.Millisecond, "wait between batches")
	reps     = flag.Int("reps", 5, "repetitions")
	variants = flag.String("variants", "a,b,c,d,e,f", "variants")
	wbuf     = flag.Int("wbuf", 0, "the client's nats.WriteBufferSize (0: nats.go's 32 KB)")
	profVar  = flag.String("profile", "", "variant to profile (server), writes $TMPDIR/natscost-<v>.prof")
	packFlag = flag.Int("pack", 0, "pub: the publisher's Options.Pack (0: fleet.DefaultPack)")
)

// pubMsgs is how many messages the pub variant's publisher sent.
var pubMsgs uint64

func main() {
	flag.Parse()
	if *serverMode {
		runServer()
		return
	}
	vs := strings.Split(*variants, ",")
	res := map[string][]float64{}
	cres := map[string][]float64{}
	for r := 0; r < *reps; r++ {
		for _, v := range vs {
			s, c, err := runOne(v, *profVar == v && r == 0)
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s: %v\n", v, err)
				os.Exit(1)
			}
			fmt.Printf("rep %d %-4s server %.2f µs/msg  client %.2f µs/msg\n", r, v, s, c)
			res[v] = append(res[v], s)
			cres[v] = append(cres[v], c)
		}
	}
	fmt.Println()
	for _, v := range vs {
		fmt.Printf("%-4s %-60s server median %.2f µs/msg (%s)  client median %.2f\n", v, desc[v], median(res[v]), list(res[v]), median(cres[v]))
	}
}

var desc = map[string]string{
	"pub":  "the daemon's fleet.Publisher on a bus, connection events",
	"raw1": "as a over a plain socket, each burst one write",
	"raw0": "as a over a plain socket, each message its own write",
	"a":    "daemon now: reply per msg, Nats-Msg-Id, file",
	"b":    "as a, no Nats-Msg-Id",
	"c":    "fast batch per burst (flow 500, gap fail, commit EOB), Msg-Id",
	"cn":   "fast batch, no Nats-Msg-Id",
	"c1":   "one fast batch for all N (commit EOB at the end), Msg-Id",
	"t":    "atomic batch per burst, Msg-Id",
	"d":    "reply on the burst's last msg only, Msg-Id",
	"e":    "as a, memory storage",
	"f":    "as a, PersistMode async",
	"fc":   "fast batch per burst + PersistMode async",
	"g":    "as a, duplicates window 30s",
	"h":    "as a, sync interval 10s (server option)",
	"i":    "as a, sync always (server option)",
	"s":    "as a, short Nats-Msg-Id (b1-<seq>)",
	"x":    "as b plus a header X-Seq (no Msg-Id)",
	"w":    "as a, duplicates window 5s",
	"w60":  "as a, duplicates window 60s",
	"p2":   "as a, 2 events per message (µs per event)",
	"p8":   "as a, 8 events per message (µs per event)",
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func list(xs []float64) string {
	var b []string
	for _, x := range xs {
		b = append(b, strconv.FormatFloat(x, 'f', 2, 64))
	}
	return strings.Join(b, " ")
}

func runServer() {
	o := &server.Options{ServerName: "cost", Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: *storeDir,
		NoLog: true, NoSigs: true, SyncInterval: *syncIvl, SyncAlways: *syncAlways}
	s, err := server.NewServer(o)
	if err != nil {
		panic(err)
	}
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		panic("not ready")
	}
	if *cpuprof != "" {
		f, err := os.Create(*cpuprof)
		if err != nil {
			panic(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			panic(err)
		}
	}
	fmt.Println(s.ClientURL())
	_, _ = io.Copy(io.Discard, os.Stdin) // the parent closes stdin: stop
	if *cpuprof != "" {
		pprof.StopCPUProfile()
	}
	s.Shutdown()
	s.WaitForShutdown()
}

func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		panic(err)
	}
	s := string(b)
	s = s[strings.LastIndexByte(s, ')')+2:]
	f := strings.Fields(s)
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // CLK_TCK 100
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func runOne(v string, profile bool) (serverUs, clientUs float64, err error) {
	dir, err := os.MkdirTemp("", "natscost-store-")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	args := []string{"-server", "-store", dir}
	switch v {
	case "h":
		args = append(args, "-sync", "10s")
	case "i":
		args = append(args, "-syncalways")
	}
	if profile {
		args = append(args, "-cpuprofile", filepath.Join(os.TempDir(), "natscost-"+v+".prof"))
	}
	exe, _ := os.Executable()
	cmd := exec.Command(exe, args...)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	url, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		return 0, 0, err
	}
	nc, err := nats.Connect(strings.TrimSpace(url), nats.WriteBufferSize(*wbuf))
	if err != nil {
		return 0, 0, err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	cfg := fleet.Options{}.StreamConfig()
	switch v {
	case "e":
		cfg.Storage = jetstream.MemoryStorage
	case "f", "fc":
		cfg.PersistMode = jetstream.AsyncPersistMode
	case "g":
		cfg.Duplicates = 30 * time.Second
	case "w":
		cfg.Duplicates = 5 * time.Second
	case "w60":
		cfg.Duplicates = 60 * time.Second
	}
	if strings.HasPrefix(v, "c") || v == "fc" {
		cfg.AllowBatchPublish = true
	}
	if v == "t" {
		cfg.AllowAtomicPublish = true
	}
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		return 0, 0, err
	}
	// warm up: a few messages the same way, not counted? Keep it simple:
	// measure everything from here.
	pid := cmd.Process.Pid
	s0, c0, w0 := procCPU(pid), selfCPU(), syscw()
	switch v {
	case "a", "b", "e", "f", "g", "h", "i", "w", "w60":
		err = perMsg(nc, v != "b", false)
	case "p2", "p8":
		pack, _ = strconv.Atoi(v[1:])
		err = perMsg(nc, true, false)
		pack = 1
	case "s", "x":
		idMode = v
		err = perMsg(nc, true, false)
		idMode = ""
	case "d":
		err = perMsg(nc, true, true)
	case "c", "fc":
		err = fastBatch(nc, true, false)
	case "cn":
		err = fastBatch(nc, false, false)
	case "c1":
		err = fastBatch(nc, true, true)
	case "t":
		err = atomicBatch(nc)
	case "pub":
		err = realPublisher(nc)
	case "raw1", "raw0":
		err = rawPerMsg(strings.TrimSpace(url), v == "raw1")
	default:
		err = fmt.Errorf("unknown variant %q", v)
	}
	if err != nil {
		return 0, 0, err
	}
	s1, c1 := procCPU(pid), selfCPU()
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, l := range strings.Split(string(st), "\n") {
			if strings.HasPrefix(l, "VmRSS") || strings.HasPrefix(l, "VmHWM") {
				fmt.Printf("   %s %s\n", v, strings.Join(strings.Fields(l), " "))
			}
		}
	}
	st, err := js.Stream(ctx, fleet.Stream)
	if err != nil {
		return 0, 0, err
	}
	want := uint64(*n)
	if v == "pub" { // events of one subject packed: the publisher's messages
		want = pubMsgs
	}
	if got := st.CachedInfo().State.Msgs; got != want && got != uint64(*n/2) && got != uint64(*n/8) {
		return 0, 0, fmt.Errorf("stream holds %d messages, want %d", got, want)
	}
	if v == "pub" {
		fmt.Printf("   pub: %.3f write syscalls an event (this process), %d messages\n", float64(syscw()-w0)/float64(*n), pubMsgs)
	}
	return float64((s1 - s0).Microseconds()) / float64(*n), float64((c1 - c0).Microseconds()) / float64(*n), nil
}

// syscw is this process's write syscalls so far.
func syscw() int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "syscw: "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

// realPublisher runs the daemon's publisher (fleet.Start, the service's
// encoder) on a bus and publishes -n connection events (opened, closed,
// as a's load makes them) recorded in bursts of -burst every -linger,
// until all are acknowledged. The client's CPU is the publisher's (and the
// bus's, small), with no listener in the process.
func realPublisher(nc *nats.Conn) error {
	bus := events.NewBus(events.Options{History: 1 << 17})
	defer bus.Close()
	pub, err := fleet.Start(nc, bus, fleet.Options{Host: "bench", Pack: *packFlag, Encode: func(dst []byte, e *events.Event) ([]byte, error) {
		return service.AppendEventJSON(dst, e, bus.BootID())
	}})
	if err != nil {
		return err
	}
	defer pub.Stop(10 * time.Second)
	for i := 0; i < *n; {
		for k := 0; k < *burst && i < *n; k, i = k+1, i+1 {
			bus.Publish(natstest.ConnEvent(i))
		}
		time.Sleep(*linger)
	}
	deadline := time.Now().Add(60 * time.Second)
	for pub.Acked() < bus.Head() {
		if time.Now().After(deadline) {
			return fmt.Errorf("acked %d of %d", pub.Acked(), bus.Head())
		}
		time.Sleep(time.Millisecond)
	}
	pubMsgs = pub.Stats().Published
	return nil
}

var idMode string
var pack = 1

const boot = "8f2c1a6e-3b7d-4c9a-9e1f-0a5b6c7d8e9f"

func payload(seq uint64, kind string) []byte {
	// ~300 bytes like the daemon's connection events.
	return []byte(fmt.Sprintf(`{"sequence":"%d","time":"2026-12-03T10:11:12.123456789Z","kind":"EVENT_KIND_%s","listenerId":"l-7f3a9c","connectionId":"l-7f3a9c-%d","remoteAddr":"127.0.0.1:%d","localAddr":"127.0.0.1:41234","bootId":"%s","listenerName":"echo-bench","bytesIn":"16","bytesOut":"16"}`,
		seq, kind, seq/2, 30000+seq%30000, boot))
}

var subjects = [2]string{
	fleet.Subject("bench", "l-7f3a9c", events.KindConnectionOpened),
	fleet.Subject("bench", "l-7f3a9c", events.KindConnectionClosed),
}

func msgFor(seq uint64, withID bool) *nats.Msg {
	kind := "CONNECTION_OPENED"
	if seq%2 == 0 {
		kind = "CONNECTION_CLOSED"
	}
	m := &nats.Msg{Subject: subjects[seq%2], Data: payload(seq, kind)}
	if pack > 1 {
		d := []byte("[")
		for i := 0; i < pack; i++ {
			if i > 0 {
				d = append(d, ',')
			}
			d = append(d, payload(seq*uint64(pack)+uint64(i), kind)...)
		}
		m.Data = append(d, ']')
	}
	if withID {
		switch idMode {
		case "s":
			m.Header = nats.Header{jetstream.MsgIDHeader: []string{"b1-" + strconv.FormatUint(seq, 10)}}
		case "x":
			m.Header = nats.Header{"X-Seq": []string{fleet.MsgID(boot, seq)}}
		default:
			m.Header = nats.Header{jetstream.MsgIDHeader: []string{fleet.MsgID(boot, seq)}}
		}
	}
	return m
}

// perMsg: each message gets inbox.<seq> as reply (lastOnly: only the
// burst's last does), at most 1024 awaiting.
func perMsg(nc *nats.Conn, withID, lastOnly bool) error {
	inbox := nc.NewInbox() + "."
	var acked atomic.Int64
	var bad atomic.Int64
	ch := make(chan struct{}, 1)
	sub, err := nc.Subscribe(inbox+"*", func(m *nats.Msg) {
		if !strings.HasPrefix(string(m.Data), `{"stream":`) || strings.Contains(string(m.Data), `"error"`) {
			bad.Add(1)
		}
		acked.Add(1)
		select {
		case ch <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	want := int64(0)
	seq := uint64(0)
	for seq < uint64(*n/pack) {
		k := min(*burst/pack, *n/pack-int(seq))
		for i := 0; i < k; i++ {
			seq++
			for want-acked.Load() >= 1024 {
				<-ch
			}
			m := msgFor(seq, withID)
			if !lastOnly || i == k-1 {
				m.Reply = inbox + strconv.FormatUint(seq, 10)
				want++
			}
			if err := nc.PublishMsg(m); err != nil {
				return err
			}
		}
		nc.Flush()
		time.Sleep(*linger)
	}
	deadline := time.Now().Add(30 * time.Second)
	for acked.Load() < want {
		select {
		case <-ch:
		case <-time.After(time.Second):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("acked %d of %d", acked.Load(), want)
		}
	}
	if bad.Load() > 0 {
		return fmt.Errorf("%d bad acks", bad.Load())
	}
	return nil
}

// fastBatch: one fast batch per burst (or one for all), flow 500, gap
// fail, committed with an EOB message; the next batch starts after the
// commit's PubAck.
func fastBatch(nc *nats.Conn, withID, one bool) error {
	prefix := nc.NewInbox()
	acks := make(chan string, 1024)
	sub, err := nc.Subscribe(prefix+".>", func(m *nats.Msg) { acks <- string(m.Data) })
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	seq := uint64(0)
	var id string
	var bseq uint64
	commit := func() error {
		bseq++
		reply := fmt.Sprintf("%s.%s.500.fail.%d.%d.$FI", prefix, id, bseq, 3)
		if err := nc.PublishMsg(&nats.Msg{Subject: subjects[0], Reply: reply}); err != nil {
			return err
		}
		for {
			select {
			case a := <-acks:
				if strings.HasPrefix(a, `{"stream":`) {
					if strings.Contains(a, `"error"`) {
						return fmt.Errorf("commit: %s", a)
					}
					return nil
				}
				if !strings.HasPrefix(a, `{"type":"ack"`) {
					return fmt.Errorf("batch answer: %s", a)
				}
			case <-time.After(10 * time.Second):
				return fmt.Errorf("no commit ack")
			}
		}
	}
	for seq < uint64(*n) {
		k := min(*burst, *n-int(seq))
		if !one || id == "" {
			id, bseq = strings.TrimPrefix(nats.NewInbox(), nats.InboxPrefix), 0
		}
		for i := 0; i < k; i++ {
			seq++
			bseq++
			op := 1
			if bseq == 1 {
				op = 0
			}
			m := msgFor(seq, withID)
			m.Reply = fmt.Sprintf("%s.%s.500.fail.%d.%d.$FI", prefix, id, bseq, op)
			if err := nc.PublishMsg(m); err != nil {
				return err
			}
		}
		if !one {
			if err := commit(); err != nil {
				return err
			}
		} else {
			nc.Flush()
			// drain flow acks
		drain:
			for {
				select {
				case a := <-acks:
					if !strings.HasPrefix(a, `{"type":"ack"`) {
						return fmt.Errorf("batch answer: %s", a)
					}
				default:
					break drain
				}
			}
		}
		time.Sleep(*linger)
	}
	if one {
		return commit()
	}
	return nil
}

// atomicBatch: one atomic batch per burst (Nats-Batch-Id, -Sequence,
// -Commit on the last, which alone has a reply).
func atomicBatch(nc *nats.Conn) error {
	seq := uint64(0)
	for seq < uint64(*n) {
		k := min(*burst, *n-int(seq))
		id := strings.TrimPrefix(nats.NewInbox(), nats.InboxPrefix)
		for i := 1; i <= k; i++ {
			seq++
			m := msgFor(seq, true)
			m.Header.Set("Nats-Batch-Id", id)
			m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i))
			if i == k {
				m.Header.Set("Nats-Batch-Commit", "1")
				r, err := nc.RequestMsg(m, 10*time.Second)
				if err != nil {
					return err
				}
				if !strings.HasPrefix(string(r.Data), `{"stream":`) || strings.Contains(string(r.Data), `"error"`) {
					return fmt.Errorf("atomic commit: %s", r.Data)
				}
				continue
			}
			if err := nc.PublishMsg(m); err != nil {
				return err
			}
		}
		time.Sleep(*linger)
	}
	return nil
}

// rawPerMsg publishes as perMsg does (reply per message, Nats-Msg-Id) over
// a plain TCP connection speaking the protocol, each burst in one write
// (oneWrite) or each message in a write of its own: what the server pays
// for the bursts arriving in pieces.
func rawPerMsg(url string, oneWrite bool) error {
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "nats://"))
	if err != nil {
		return err
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil { // INFO
		return err
	}
	inbox := "_INBOX.raw."
	if _, err := fmt.Fprintf(c, "CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"protocol\":1}\r\nSUB %s* 1\r\nPING\r\n", inbox); err != nil {
		return err
	}
	if l, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(l, "PONG") {
		return fmt.Errorf("connect: %q %v", l, err)
	}
	var acked atomic.Int64
	var bad atomic.Int64
	ch := make(chan struct{}, 1)
	go func() {
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if !strings.HasPrefix(l, "MSG ") {
				if strings.HasPrefix(l, "PING") {
					fmt.Fprint(c, "PONG\r\n")
				}
				continue
			}
			f := strings.Fields(l)
			size, _ := strconv.Atoi(f[len(f)-1])
			body := make([]byte, size+2)
			if _, err := io.ReadFull(r, body); err != nil {
				return
			}
			if !strings.HasPrefix(string(body), `{"stream":`) || strings.Contains(string(body), `"error"`) {
				bad.Add(1)
			}
			acked.Add(1)
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	var buf []byte
	seq := uint64(0)
	for seq < uint64(*n) {
		k := min(*burst, *n-int(seq))
		buf = buf[:0]
		for i := 0; i < k; i++ {
			seq++
			for int64(seq)-1-acked.Load() >= 1024 {
				<-ch
			}
			m := msgFor(seq, true)
			hdr := "NATS/1.0\r\n" + jetstream.MsgIDHeader + ": " + m.Header.Get(jetstream.MsgIDHeader) + "\r\n\r\n"
			buf = fmt.Appendf(buf, "HPUB %s %s%d %d %d\r\n%s", m.Subject, inbox, seq, len(hdr), len(hdr)+len(m.Data), hdr)
			buf = append(append(buf, m.Data...), '\r', '\n')
			if !oneWrite {
				if _, err := c.Write(buf); err != nil {
					return err
				}
				buf = buf[:0]
			}
		}
		if _, err := c.Write(buf); err != nil {
			return err
		}
		time.Sleep(*linger)
	}
	deadline := time.Now().Add(30 * time.Second)
	for acked.Load() < int64(*n) {
		select {
		case <-ch:
		case <-time.After(time.Second):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("acked %d of %d", acked.Load(), *n)
		}
	}
	if bad.Load() > 0 {
		return fmt.Errorf("%d bad acks", bad.Load())
	}
	return nil
}
