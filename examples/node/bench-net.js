#!/usr/bin/env node
// bench-net: an echo server written with listenerd-net against the same
// server written with Node's own net, in the same run, interleaved, with
// medians and ratios (BENCHMARKS.md, "Node stream handler").
//
//   go build -o /tmp/nb/listenerd ./daemon
//   node examples/node/bench-net.js --daemon /tmp/nb/listenerd [--reps 5]
//   node examples/node/bench-net.js --socket PATH   # a daemon already running
//
// Each server is `createServer((s) => s.pipe(s))` in a node process of its
// own; the load is this process, with Node's net:
//   bulk   one connection writes --bulk-mib MiB and reads the echo at once;
//          MiB/s of one direction
//   conns  --conc loops for --conn-secs seconds of: connect, write 16
//          bytes, read the 16-byte echo, end, wait for close; connections
//          a second
// On Linux it also reads the CPU time each server used (/proc/PID/stat),
// and for listenerd-net the daemon's, when it started the daemon itself:
// CPU per MiB and per connection move much less than rates on a shared
// machine.
// Other flags: --window BYTES (listenerd-net's flowControlWindow), --quick.
'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const argv = process.argv.slice(2);
const opt = (name, def) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : def;
};

// serve is the child: an echo server, printing its port.
if (argv[0] === 'serve') {
  const kind = argv[1];
  const lib = kind === 'net' ? net : require('./listenerd-net');
  const options = kind === 'net' ? {} : { flowControlWindow: Number(opt('--window', 0)) || undefined };
  const server = lib.createServer(options, (s) => {
    s.on('error', () => s.destroy());
    s.pipe(s);
  });
  server.on('error', (err) => { console.error(`${kind}: ${err.message}`); process.exit(1); });
  server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, () => console.log(server.address().port));
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
} else {
  main().catch((err) => { console.error(err.stack || err.message); process.exit(1); });
}

function startServer(kind, env) {
  const args = [__filename, 'serve', kind];
  if (opt('--window')) args.push('--window', opt('--window'));
  const child = spawn(process.execPath, args, { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    readline.createInterface({ input: child.stdout }).once('line', (line) => resolve({ kind, child, port: Number(line) }));
    child.once('exit', (code) => reject(new Error(`${kind} server exited ${code}`)));
  });
}

function startDaemon(bin) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-net-'));
  const socket = path.join(dir, 's');
  const child = spawn(bin, ['--ephemeral', '--socket', socket], { stdio: ['ignore', 'pipe', 'ignore'] });
  return new Promise((resolve, reject) => {
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      if (line.startsWith('listenerd serving')) resolve({ child, socket });
    });
    child.once('exit', (code) => reject(new Error(`daemon exited ${code}`)));
  });
}

// bulk: MiB/s of one direction, echoed both ways at once on one connection.
function bulk(port, mib) {
  return new Promise((resolve, reject) => {
    const total = mib << 20;
    const chunk = Buffer.alloc(64 << 10, 'x');
    const start = process.hrtime.bigint();
    const c = net.connect({ port, host: '127.0.0.1' });
    let sent = 0;
    let got = 0;
    const pump = () => {
      while (sent < total) {
        sent += chunk.length;
        if (!c.write(chunk)) return;
      }
      c.end();
    };
    c.on('connect', pump);
    c.on('drain', pump);
    c.on('data', (d) => { got += d.length; });
    c.on('end', () => {
      const s = Number(process.hrtime.bigint() - start) / 1e9;
      if (got !== total) reject(new Error(`echoed ${got} of ${total}`));
      else resolve(mib / s);
    });
    c.on('error', reject);
  });
}

// conns: connections a second, each connect, 16-byte echo, close.
function conns(port, conc, secs) {
  return new Promise((resolve, reject) => {
    const msg = Buffer.alloc(16, 'y');
    const start = process.hrtime.bigint();
    const until = Date.now() + secs * 1000;
    let done = 0;
    let running = conc;
    const one = () => {
      if (Date.now() >= until) {
        if (--running === 0) resolve(done / (Number(process.hrtime.bigint() - start) / 1e9));
        return;
      }
      const c = net.connect({ port, host: '127.0.0.1' }, () => c.write(msg));
      let got = 0;
      c.on('data', (d) => {
        got += d.length;
        if (got >= msg.length) c.end();
      });
      c.on('error', reject);
      c.on('close', () => {
        if (got === msg.length) done++;
        setImmediate(one);
      });
    };
    for (let i = 0; i < conc; i++) one();
  });
}

// cpuMs is the CPU time (user + system) a process has used, in ms; NaN
// where /proc is not there.
function cpuMs(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) * 10; // utime, stime at 100 Hz
  } catch (_) {
    return NaN;
  }
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

async function main() {
  const quick = argv.includes('--quick');
  const reps = Number(opt('--reps', quick ? 1 : 5));
  const mib = Number(opt('--bulk-mib', quick ? 16 : 256));
  const secs = Number(opt('--conn-secs', quick ? 1 : 5));
  const conc = Number(opt('--conc', 16));
  let daemon = null;
  let socket = opt('--socket');
  if (opt('--daemon')) {
    daemon = await startDaemon(opt('--daemon'));
    socket = daemon.socket;
  }
  if (!socket) throw new Error('--daemon PATH or --socket PATH');
  const servers = [await startServer('net', {}), await startServer('listenerd-net', { LISTENERD_SOCKET: socket })];
  const results = { bulk: { net: [], 'listenerd-net': [] }, conns: { net: [], 'listenerd-net': [] } };
  // CPU ms per MiB (bulk) and per connection (conns): [server, daemon].
  const cpu = { bulk: { net: [], 'listenerd-net': [] }, conns: { net: [], 'listenerd-net': [] } };
  const measure = async (kind, s, run) => {
    const pids = [s.child.pid, daemon && s.kind === 'listenerd-net' ? daemon.child.pid : 0];
    const before = pids.map((p) => (p ? cpuMs(p) : 0));
    const start = process.hrtime.bigint();
    const v = await run();
    const ops = v * (Number(process.hrtime.bigint() - start) / 1e9); // MiB, or connections
    cpu[kind][s.kind].push(pids.map((p, i) => (p ? (cpuMs(p) - before[i]) / ops : 0)));
    return v;
  };
  try {
    // Warm up each once (JIT, the daemon's first connections).
    for (const s of servers) { await bulk(s.port, 8); await conns(s.port, conc, 0.5); }
    for (let r = 0; r < reps; r++) {
      // Interleaved, the order alternating between repetitions.
      const order = r % 2 ? [...servers].reverse() : servers;
      for (const s of order) {
        const v = await measure('bulk', s, () => bulk(s.port, mib));
        results.bulk[s.kind].push(v);
        console.error(`rep ${r + 1} bulk ${s.kind}: ${v.toFixed(1)} MiB/s`);
      }
      for (const s of order) {
        const v = await measure('conns', s, () => conns(s.port, conc, secs));
        results.conns[s.kind].push(v);
        console.error(`rep ${r + 1} conns ${s.kind}: ${v.toFixed(0)} conn/s`);
      }
    }
  } finally {
    for (const s of servers) s.child.kill();
    if (daemon) daemon.child.kill();
  }
  const row = (name, unit, r) => {
    const a = median(r['listenerd-net']);
    const b = median(r.net);
    const fmt = (x) => (unit === 'MiB/s' ? x.toFixed(1) : x.toFixed(0));
    console.log(`| ${name} | ${fmt(a)} ${unit} | ${fmt(b)} ${unit} | ${(a / b).toFixed(2)}x | ${r['listenerd-net'].map(fmt).join(', ')} / ${r.net.map(fmt).join(', ')} |`);
  };
  console.log(`node ${process.version}, ${os.cpus().length} CPUs, load ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}; ` +
    `${reps} reps, bulk ${mib} MiB, conns ${conc} loops x ${secs} s${opt('--window') ? `, window ${opt('--window')}` : ''}`);
  console.log('| case | listenerd-net (median) | node net (median) | ratio | runs: listenerd-net / net |');
  console.log('| --- | --- | --- | --- | --- |');
  row('bulk echo, one connection', 'MiB/s', results.bulk);
  row('connect, 16-byte echo, close', 'conn/s', results.conns);
  const cpuRow = (name, unit, c) => {
    const med = (k, i) => median(c[k].map((x) => x[i]));
    const [ln, d, n] = [med('listenerd-net', 0), med('listenerd-net', 1), med('net', 0)];
    if (Number.isNaN(ln) || Number.isNaN(n)) return;
    const daemonPart = daemon ? ` + daemon ${d.toFixed(2)} = ${(ln + d).toFixed(2)}` : '';
    console.log(`| ${name} | node ${ln.toFixed(2)}${daemonPart} ms/${unit} | ${n.toFixed(2)} ms/${unit} | ${(ln / n).toFixed(1)}x${daemon ? ` (${((ln + d) / n).toFixed(1)}x)` : ''} |`);
  };
  console.log('');
  console.log('| CPU per operation (medians) | listenerd-net | node net | listenerd-net / net (with the daemon) |');
  console.log('| --- | --- | --- | --- |');
  cpuRow('bulk echo', 'MiB', cpu.bulk);
  cpuRow('connect, echo, close', 'conn', cpu.conns);
}
