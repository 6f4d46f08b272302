// The Node peer of the bench, written as a Node user would write it:
//   node peer.js               net.createServer echoing every byte (a, b, d, e)
//   node peer.js HOST:PORT     a forwarder piping each connection to
//                              HOST:PORT and back, half-closes passed on (c)
// It prints its address, then serves until its stdin closes or it gets
// SIGTERM.
'use strict';
const net = require('net');

function echo(sock) {
  sock.on('error', () => sock.destroy());
  sock.pipe(sock);
}

function forwardTo(upstream) {
  const [host, port] = upstream.split(/:(?=[^:]*$)/);
  return (client) => {
    const up = net.connect({ host, port: Number(port), allowHalfOpen: true });
    client.on('error', () => up.destroy());
    up.on('error', () => client.destroy());
    client.pipe(up);
    up.pipe(client);
  };
}

const upstream = process.argv[2];
const server = net.createServer({ allowHalfOpen: Boolean(upstream) },
  upstream ? forwardTo(upstream) : echo);
server.on('error', (err) => {
  console.error('node peer:', err.message);
});
server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, () => {
  const a = server.address();
  console.log(`${a.address}:${a.port}`);
});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
process.on('SIGTERM', () => process.exit(0));
