#!/usr/bin/env node
// A listenerd-net server for the e2e tests (e2e/node_net_test.go): it
// listens through the daemon at $LISTENERD_SOCKET, prints one line for
// everything that happens, and takes commands on stdin, one a line.
//
//   node scenario.js MODE [--port N] [--allow-half-open] [--pause-on-connect] [--max N]
//
// Modes, what each socket does:
//   upper      writes back each chunk upper-cased (and nothing else: with
//              allowHalfOpen false, Node's default, the socket ends its side
//              by itself once the peer ended)
//   reply-end  keeps what it reads; at the peer's end writes
//              "reply after end: <what it read>" and ends
//   end-first  writes "bye" and ends at once; prints what it reads after
//   destroy    destroys the socket at its first bytes
//   quiet      only reports (data included)
//   pause      the first socket is paused (not read until "resume", then
//              read and dropped); the others echo
//
// Lines printed: listening ADDRESS PORT FAMILY | connection RPORT RADDR
// RFAMILY LADDR LPORT | data RPORT TEXT | end RPORT READ | error RPORT CODE |
// close RPORT HADERROR READ WRITTEN REASON|- | drop JSON | server-error CODE SYSCALL
// ADDRESS PORT MESSAGE | server-close | closed CODE|ok | connections N |
// read RPORT BYTES.
// Commands: max N|none (server.maxConnections), count (getConnections),
// close (server.close), resume (the paused sockets), read RPORT.
'use strict';

const readline = require('node:readline');
const net = require('../listenerd-net');

const args = process.argv.slice(2);
const mode = args[0];
const flag = (name) => args.includes(name);
const value = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const say = (...words) => console.log(words.join(' '));

const server = net.createServer({
  allowHalfOpen: flag('--allow-half-open'),
  pauseOnConnect: flag('--pause-on-connect'),
});
if (value('--max') !== undefined) server.maxConnections = Number(value('--max'));

const sockets = new Map(); // remote port -> socket
const paused = [];

server.on('connection', (sock) => {
  const id = sock.remotePort;
  sockets.set(String(id), sock);
  say('connection', id, sock.remoteAddress, sock.remoteFamily, sock.localAddress, sock.localPort);
  let read = '';
  sock.on('error', (err) => say('error', id, err.code));
  sock.on('close', (hadError) => say('close', id, hadError, sock.bytesRead, sock.bytesWritten, sock.closeReason || '-'));
  sock.on('end', () => say('end', id, JSON.stringify(read)));
  switch (mode) {
    case 'upper':
      sock.on('data', (d) => { read += d; sock.write(String(d).toUpperCase()); });
      break;
    case 'reply-end':
      sock.on('data', (d) => { read += d; });
      sock.on('end', () => sock.end(`reply after end: ${read}`));
      break;
    case 'end-first':
      sock.end('bye');
      sock.on('data', (d) => { read += d; say('data', id, JSON.stringify(String(d))); });
      break;
    case 'destroy':
      sock.once('data', () => { say('destroying', id); sock.destroy(); });
      break;
    case 'pause':
      if (paused.length === 0) {
        sock.pause();
        paused.push(sock);
        say('paused', id);
      } else {
        sock.pipe(sock);
      }
      break;
    default: // quiet
      sock.on('data', (d) => { read += d; say('data', id, JSON.stringify(String(d))); });
      break;
  }
});
server.on('drop', (d) => say('drop', JSON.stringify(d)));
server.on('error', (err) => say('server-error', err.code, err.syscall, err.address, err.port, err.message));
server.on('close', () => say('server-close'));
server.listen({ port: Number(value('--port') || 0), host: '127.0.0.1' }, () => {
  const a = server.address();
  say('listening', a.address, a.port, a.family);
});

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, arg] = line.trim().split(/\s+/);
  switch (cmd) {
    case 'max':
      server.maxConnections = arg === 'none' ? undefined : Number(arg);
      say('max', arg);
      break;
    case 'count':
      server.getConnections((err, n) => say('connections', err ? err.code : n));
      break;
    case 'close':
      server.close((err) => say('closed', err ? err.code : 'ok'));
      break;
    case 'resume':
      for (const s of paused.splice(0)) s.on('data', () => {}); // drained, not echoed
      for (const s of sockets.values()) s.resume();
      say('resumed');
      break;
    case 'read': {
      const s = sockets.get(arg);
      say('read', arg, s ? s.bytesRead : -1);
      break;
    }
    default:
      say('unknown', cmd);
  }
});
