#!/usr/bin/env node
// A Node.js client of listenerd over gRPC, loading the API straight from
// proto/: it creates an echo listener, watches its events while a plain TCP
// client (Node's net) connects and talks to it, prints the events, and
// closes the listener. It exits 0 when all of that happened, 1 otherwise.
//
//   npm ci --prefix examples/node
//   node examples/node/client.js [--socket PATH]
//
// The socket is --socket, else $LISTENERD_SOCKET, else the daemon's default
// ($XDG_RUNTIME_DIR/listenerd/listenerd.sock, or
// /tmp/listenerd-<uid>/listenerd.sock).
'use strict';

const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', '..', 'proto', 'listenerd', 'v1', 'listenerd.proto');
const MESSAGE = 'I am Chuck Norris!';
const TIMEOUT_MS = 30000;

function socketPath() {
  const i = process.argv.indexOf('--socket');
  if (i >= 0 && process.argv[i + 1]) return process.argv[i + 1];
  if (process.env.LISTENERD_SOCKET) return process.env.LISTENERD_SOCKET;
  const dir = process.env.XDG_RUNTIME_DIR
    ? path.join(process.env.XDG_RUNTIME_DIR, 'listenerd')
    : path.join(os.tmpdir(), `listenerd-${process.getuid()}`);
  return path.join(dir, 'listenerd.sock');
}

// The API, loaded from the .proto file itself. The google/protobuf
// well-known types it imports (Duration, Timestamp, FieldMask) ship with
// proto-loader. keepCase keeps the field names of the .proto (listener_id,
// bound_address); uint64s come as strings, enums as their names, and
// oneofs: true names the event kind that is set (event.kind).
const packageDefinition = protoLoader.loadSync(PROTO, {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const { ListenerService } = grpc.loadPackageDefinition(packageDefinition).listenerd.v1;

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 10000);
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

function describe(ev) {
  const k = ev[ev.kind];
  switch (ev.kind) {
    case 'connection_opened':
      return `${k.connection_id} from ${k.tuple.remote_address}:${k.tuple.remote_port} (${k.tuple.family}) to ${k.tuple.local_address}:${k.tuple.local_port}`;
    case 'connection_closed':
      return `${k.connection_id} ${k.reason} in=${k.bytes_in} out=${k.bytes_out}`;
    case 'listener_closed':
      return `drained=${k.drained} destroyed=${k.destroyed}`;
    default:
      return JSON.stringify(k);
  }
}

// talk connects to addr like the seed's Node client: write the message,
// print the reply, close.
function talk(addr) {
  const i = addr.lastIndexOf(':');
  const host = addr.slice(0, i).replace(/^\[|\]$/g, '');
  const port = Number(addr.slice(i + 1));
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host, port }, () => {
      console.log(`CONNECTED TO: ${host}:${port}`);
      sock.write(MESSAGE);
    });
    sock.on('data', (data) => {
      console.log(`echo: ${data}`);
      sock.destroy();
      resolve(String(data));
    });
    sock.on('error', reject);
  });
}

async function main() {
  const socket = socketPath();
  const unreachable = `cannot reach listenerd at ${socket} — is the daemon running? start it with: go run ./daemon`;
  if (!fs.existsSync(socket)) throw new Error(unreachable);
  const client = new ListenerService(`unix://${socket}`, grpc.credentials.createInsecure());
  await new Promise((resolve, reject) => {
    client.waitForReady(new Date(Date.now() + 5000), (err) =>
      err ? reject(new Error(unreachable)) : resolve());
  });

  const { listener } = await call(client, 'CreateListener', {
    name: `node-example-${process.pid}`,
    spec: { port: 0, handler: { echo: {} } },
  });
  const id = listener.id;
  console.log(`created ${id} listening on ${listener.status.bound_address}`);

  // Watch the listener's events. The first response carries no events,
  // only the head: from then on nothing of this listener is missed.
  const watch = client.watchEvents({ listener_ids: [id] });
  let closing = null; // the CloseListener call, once sent
  const done = new Promise((resolve, reject) => {
    const seen = new Set();
    let first = true;
    watch.on('data', (resp) => {
      if (first) {
        first = false;
        console.log(`watching ${id} from seq=${resp.head_sequence}`);
        talk(listener.status.bound_address).then((reply) => {
          if (reply !== MESSAGE) reject(new Error(`echo ${JSON.stringify(reply)}, want ${JSON.stringify(MESSAGE)}`));
        }, reject);
      }
      for (const ev of resp.events) {
        console.log(`event seq=${ev.sequence} ${ev.kind} ${describe(ev)}`);
        seen.add(ev.kind);
        if (ev.kind === 'connection_closed' && !closing) {
          closing = call(client, 'CloseListener', { id }).then(
            (r) => console.log(`closed ${id}: ${r.listener.status.state}`));
        }
        if (ev.kind === 'listener_closed') {
          for (const want of ['connection_opened', 'connection_closed']) {
            if (!seen.has(want)) reject(new Error(`no ${want} event before listener_closed`));
          }
          (closing || Promise.resolve()).then(resolve, reject);
        }
      }
    });
    watch.on('error', (err) => {
      if (err.code !== grpc.status.CANCELLED) reject(err);
    });
    watch.on('end', () => reject(new Error('the event stream ended before the listener closed')));
  });

  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${TIMEOUT_MS / 1000}s`)), TIMEOUT_MS);
  });
  try {
    await Promise.race([done, timeout]);
  } finally {
    clearTimeout(timer);
    watch.cancel();
    if (!closing) {
      await call(client, 'CloseListener', { id, force: true }).catch(() => {});
    }
    client.close();
  }
  console.log('done');
}

main().catch((err) => {
  const code = err.code !== undefined && grpc.status[err.code] ? ` (${grpc.status[err.code]})` : '';
  console.error(`error${code}: ${err.details || err.message}`);
  process.exit(1);
});
