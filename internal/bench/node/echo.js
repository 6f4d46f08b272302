// The Node peer of the bench: net.createServer echoing every byte, as a
// Node user would write it. It prints its address, then serves until its
// stdin closes or it gets SIGTERM.
'use strict';
const net = require('net');

const server = net.createServer((sock) => {
  sock.on('error', () => sock.destroy());
  sock.pipe(sock);
});
server.on('error', (err) => {
  console.error('node echo:', err.message);
});
server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, () => {
  const a = server.address();
  console.log(`${a.address}:${a.port}`);
});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
process.on('SIGTERM', () => process.exit(0));
