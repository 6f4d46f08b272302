// listenerd-net: Node's net.createServer, served by listenerd.
//
// The daemon binds the port, applies the listener's limits and ACLs, and
// hands each accepted connection to this process over gRPC (the stream
// handler: AttachHandler offers connections, one ServeConnection stream
// carries each socket's bytes both ways). What the program sees is shaped
// like Node's own net module:
//
//   const net = require('./listenerd-net');
//   const server = net.createServer((sock) => sock.pipe(sock));
//   server.listen(6969, '127.0.0.1', () => console.log(server.address()));
//
// Sockets are stream.Duplex with Node's allowHalfOpen semantics; end() is
// a half-close (FIN) and destroy() a reset (RST). See README.md beside this
// file for what differs from Node.
'use strict';

const { EventEmitter } = require('node:events');
const { Duplex } = require('node:stream');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', '..', 'proto', 'listenerd', 'v1', 'listenerd.proto');

// MAX_FRAME is the most bytes sent in one data message: the daemon takes
// messages of at most 64 KiB, and grpc-go pools a 32 KiB payload into a far
// bigger buffer.
const MAX_FRAME = 32752;

// FLOW_WINDOW is the HTTP/2 flow-control window asked of grpc-js, per
// stream (SETTINGS_INITIAL_WINDOW_SIZE) and for the connection: grpc-js
// 1.14 reads it from the channel option 'grpc-node.flow_control_window'
// (it does not know 'grpc.http2.initial_window_size'). The default 64 KiB
// window holds a socket to a fraction of its speed.
const FLOW_WINDOW = 1 << 20;

// UNLIMITED_DRAIN is close()'s drain timeout when none is given: Node's
// server.close() lets open connections live as long as they like, so the
// daemon is asked to wait (about) forever.
const UNLIMITED_DRAIN = { seconds: 100 * 365 * 24 * 3600, nanos: 0 };

let service = null;

// loadService loads the API from the .proto file, once.
function loadService() {
  if (!service) {
    const def = protoLoader.loadSync(PROTO, {
      keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
    });
    service = grpc.loadPackageDefinition(def).listenerd.v1.ListenerService;
  }
  return service;
}

// defaultSocket is the daemon's API socket when no option names one:
// $LISTENERD_SOCKET, else $XDG_RUNTIME_DIR/listenerd/listenerd.sock, else
// /tmp/listenerd-<uid>/listenerd.sock (internal/paths).
function defaultSocket() {
  if (process.env.LISTENERD_SOCKET) return process.env.LISTENERD_SOCKET;
  const dir = process.env.XDG_RUNTIME_DIR
    ? path.join(process.env.XDG_RUNTIME_DIR, 'listenerd')
    : path.join(process.env.TMPDIR || '/tmp', `listenerd-${process.getuid()}`); // Go's os.TempDir
  return path.join(dir, 'listenerd.sock');
}

function familyName(f) {
  return f === 'FAMILY_IPV6' ? 'IPv6' : 'IPv4';
}

function stripPrefix(name, prefix) {
  return typeof name === 'string' && name.startsWith(prefix) ? name.slice(prefix.length) : name;
}

// parseAddress splits "host:port" or "[v6]:port".
function parseAddress(bound) {
  const i = bound.lastIndexOf(':');
  const address = bound.slice(0, i).replace(/^\[|\]$/g, '');
  return { address, family: net.isIPv6(address) ? 'IPv6' : 'IPv4', port: Number(bound.slice(i + 1)) };
}

function nodeError(code, message, props) {
  const err = new Error(message);
  err.code = code;
  if (os.constants.errno[code] !== undefined) err.errno = -os.constants.errno[code];
  return Object.assign(err, props);
}

// errorReason reads the ErrorInfo reason the daemon attaches to its errors
// (grpc-status-details-bin: google.rpc.Status, details[] Any, ErrorInfo
// field 1), with a few lines of protobuf wire decoding.
function errorReason(err) {
  const bins = err && err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  for (const bin of bins) {
    for (const [field, any] of fields(bin)) {
      if (field !== 3) continue; // Status.details
      let type = '';
      let value = null;
      for (const [f, v] of fields(any)) {
        if (f === 1) type = v.toString();
        if (f === 2) value = v;
      }
      if (type.endsWith('/google.rpc.ErrorInfo') && value) {
        for (const [f, v] of fields(value)) if (f === 1) return v.toString();
      }
    }
  }
  return '';
}

// fields lists the length-delimited fields of a protobuf message (the
// others are skipped).
function fields(buf) {
  const out = [];
  let i = 0;
  const varint = () => {
    let n = 0;
    let mul = 1;
    for (;;) {
      if (i >= buf.length) throw new Error('truncated');
      const b = buf[i++];
      n += (b & 0x7f) * mul;
      if (b < 0x80) return n;
      mul *= 128;
    }
  };
  try {
    while (i < buf.length) {
      const key = varint();
      const field = Math.floor(key / 8);
      switch (key & 7) {
        case 0: varint(); break;
        case 1: i += 8; break;
        case 2: { const n = varint(); out.push([field, buf.subarray(i, i + n)]); i += n; break; }
        case 5: i += 4; break;
        default: return out;
      }
    }
  } catch (_) { /* a malformed detail: what was read so far */ }
  return out;
}

// listenError names a failed CreateListener the way Node names a failed
// bind (EADDRINUSE, EACCES); other failures keep the daemon's words.
function listenError(err, host, port) {
  const address = host || '127.0.0.1';
  const reason = errorReason(err);
  const props = { syscall: 'listen', address, port, cause: err };
  if (reason === 'ADDRESS_IN_USE' || (err.code === grpc.status.FAILED_PRECONDITION && /address in use/i.test(err.details))) {
    return nodeError('EADDRINUSE', `listen EADDRINUSE: address already in use ${address}:${port}`, props);
  }
  if (reason === 'PERMISSION_DENIED' || err.code === grpc.status.PERMISSION_DENIED) {
    return nodeError('EACCES', `listen EACCES: permission denied ${address}:${port}`, props);
  }
  return listenerdError(err, 'listen');
}

// listenerdError wraps a gRPC error of the daemon: code is
// ERR_LISTENERD_<gRPC status name>, grpcCode and reason are the daemon's.
function listenerdError(err, what) {
  const name = grpc.status[err.code] || 'UNKNOWN';
  return nodeError(`ERR_LISTENERD_${name}`, `${what}: listenerd: ${err.details || err.message}`,
    { grpcCode: err.code, reason: errorReason(err), cause: err });
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 30000 }, (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

// Server is net.Server over listenerd.
class Server extends EventEmitter {
  constructor(options, connectionListener) {
    super();
    if (typeof options === 'function') {
      connectionListener = options;
      options = {};
    }
    options = options || {};
    if (typeof connectionListener === 'function') this.on('connection', connectionListener);

    this.allowHalfOpen = Boolean(options.allowHalfOpen);
    this.pauseOnConnect = Boolean(options.pauseOnConnect);
    // listenerd's own options.
    this._socketPath = options.socket || defaultSocket();
    this._target = options.target || `unix://${this._socketPath}`;
    this._credentials = options.credentials || grpc.credentials.createInsecure();
    this._name = options.name || '';
    this._claimTimeout = options.claimTimeout; // ms
    this._handlerConnections = options.handlerConnections || 65535;
    this._drainTimeout = options.drainTimeout; // ms, for close()
    this._label = options.label || `node:${os.hostname()}:${process.pid}`;
    this._window = options.flowControlWindow || FLOW_WINDOW;

    this._connections = 0;
    this._sockets = new Set();
    this._calls = 0; // ServeConnection calls not yet ended
    this._state = 'idle'; // opening, listening, closing, idle
    this._client = null;
    this._listener = null;
    this._address = null;
    this._handlerId = '';
    this._attach = null;
    this._early = []; // offers that came before 'listening'
    this._watch = null;
    this._closeWanted = false;
    this._closeCallDone = false;
    this._maxWanted = undefined;
    this._maxSent = undefined;
    this._limitsBusy = false;
  }

  get listening() { return this._state === 'listening'; }

  // maxConnections is the listener's limit in the daemon
  // (spec.limits.max_connections): 0 rejects every connection (Node 21+),
  // undefined, null or Infinity lift it. A change applies to the next
  // accept and closes nobody; connections over it are dropped ('drop').
  get maxConnections() { return this._maxWanted; }

  set maxConnections(v) {
    if (v === null || v === undefined || v === Infinity) {
      v = undefined;
    } else if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
      throw new RangeError(`maxConnections must be an integer 0-4294967295, undefined or Infinity: ${v}`);
    }
    this._maxWanted = v;
    if (this._state === 'listening') this._syncLimits();
  }

  // listen(port[, host][, backlog][, cb]),
  // listen({port, host, backlog, signal}[, cb]) or listen([cb]). An omitted
  // host is the daemon's default, 127.0.0.1 (Node's is every address).
  listen(...args) {
    const cb = typeof args[args.length - 1] === 'function' ? args.pop() : undefined;
    let opts = {};
    if (args[0] !== null && typeof args[0] === 'object') {
      opts = args[0];
    } else {
      opts = { port: args[0], host: typeof args[1] === 'string' ? args[1] : undefined,
        backlog: typeof args[1] === 'number' ? args[1] : args[2] };
    }
    if (opts.path !== undefined || (typeof opts.port === 'string' && !/^\d+$/.test(opts.port))) {
      throw nodeError('ERR_INVALID_ARG_VALUE', 'listenerd-net listens on TCP ports only, not on paths');
    }
    const port = opts.port === undefined || opts.port === null ? 0 : Number(opts.port);
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw nodeError('ERR_SOCKET_BAD_PORT', `options.port should be >= 0 and < 65536. Received ${opts.port}.`);
    }
    if (this._state !== 'idle') {
      throw nodeError('ERR_SERVER_ALREADY_LISTEN', 'Listen method has been called more than once without closing.');
    }
    if (cb) this.once('listening', cb);
    if (opts.signal) {
      if (opts.signal.aborted) {
        process.nextTick(() => this.close());
      } else {
        opts.signal.addEventListener('abort', () => this.close(), { once: true });
      }
    }
    this._state = 'opening';
    this._closeWanted = false;
    this._start(opts.host || '', port, opts.backlog).catch((err) => this._fail(err));
    return this;
  }

  _connect() {
    if (!this._client) {
      const ListenerService = loadService();
      this._client = new ListenerService(this._target, this._credentials, {
        'grpc-node.flow_control_window': this._window,
      });
    }
    return this._client;
  }

  async _start(host, port, backlog) {
    const client = this._connect();
    const spec = {
      host, port,
      allow_half_open: true, // the stream handler leaves both halves to us
      handler: { stream: this._claimTimeout !== undefined ? { claim_timeout: msDuration(this._claimTimeout) } : {} },
    };
    if (backlog !== undefined && backlog !== null && backlog > 0) spec.backlog = backlog;
    const max = this._maxWanted;
    if (max !== undefined) spec.limits = { max_connections: max };
    let resp;
    try {
      resp = await unary(client, 'CreateListener', { name: this._name, spec });
    } catch (err) {
      throw listenError(err, host, port);
    }
    this._listener = resp.listener;
    this._maxSent = max;
    this._address = parseAddress(resp.listener.status.bound_address);
    if (this._closeWanted) {
      this._shutdown();
      return;
    }
    try {
      await Promise.all([this._startWatch(), this._startAttach()]);
    } catch (err) {
      if (this._closeWanted) return; // close() came first
      throw err;
    }
    if (this._closeWanted) return;
    this._state = 'listening';
    this._syncLimits();
    this.emit('listening');
    for (const offer of this._early.splice(0)) {
      if (this._state === 'listening') this._take(offer); // not after a close() in 'listening'
    }
  }

  async _fail(err) {
    if (this._listener) {
      // The listener is ours: do not leave it bound.
      await unary(this._client, 'CloseListener', { id: this._listener.id, force: true }).catch(() => {});
    }
    this._teardown();
    this.emit('error', err);
  }

  // _startAttach attaches this process as the listener's handler; it
  // resolves once the daemon says attached.
  _startAttach() {
    return new Promise((resolve, reject) => {
      const call = this._client.AttachHandler({
        listener_id: this._listener.id, max_connections: this._handlerConnections, label: this._label,
      });
      this._attach = call;
      let attached = false;
      call.on('data', (m) => {
        if (m.kind === 'attached') {
          attached = true;
          this._handlerId = m.attached.handler_id;
          resolve();
        } else if (m.kind === 'offer') {
          // 'listening' comes before any 'connection', as in Node.
          if (this._state === 'listening') this._take(m.offer);
          else this._early.push(m.offer);
        }
      });
      call.on('error', (err) => {
        this._attach = null;
        if (!attached) {
          reject(listenerdError(err, 'attach'));
          return;
        }
        if (this._state === 'listening') {
          // The daemon went away, or someone else closed the listener:
          // the server is closed ('close' once its sockets are gone).
          this.emit('error', listenerdError(err, 'attach'));
          this._shutdown(true);
          return;
        }
        this._maybeClosed(); // closing: the daemon ended the attach
      });
      call.on('end', () => { this._attach = null; this._maybeClosed(); });
    });
  }

  // _startWatch follows the listener's rejected connections for 'drop'; it
  // resolves once the watch is open (nothing rejected after that is
  // missed), and resumes by itself after a cut.
  _startWatch(after, bootId) {
    return new Promise((resolve, reject) => {
      const req = { listener_ids: [this._listener.id], kinds: ['EVENT_KIND_CONNECTION_REJECTED'] };
      if (after !== undefined) Object.assign(req, { after_sequence: after, boot_id: bootId });
      const call = this._client.WatchEvents(req);
      this._watch = call;
      let first = true;
      let last = after;
      let boot = bootId;
      call.on('data', (resp) => {
        if (first) {
          first = false;
          boot = resp.boot_id;
          if (last === undefined) last = resp.head_sequence;
          resolve();
        }
        for (const ev of resp.events) {
          last = ev.sequence;
          if (ev.kind === 'connection_rejected') this._drop(ev.connection_rejected);
        }
      });
      call.on('error', (err) => {
        if (this._watch !== call) return;
        this._watch = null;
        if (first) {
          reject(listenerdError(err, 'watch'));
        } else if (this._state === 'listening' && err.code === grpc.status.RESOURCE_EXHAUSTED) {
          this._startWatch(last, boot).catch(() => {}); // cut as a slow watcher: resume
        } else if (this._state === 'listening' && err.code === grpc.status.OUT_OF_RANGE) {
          this._startWatch().catch(() => {}); // the resume point is gone: from now
        }
        this._maybeClosed();
      });
      call.on('end', () => { if (this._watch === call) this._watch = null; this._maybeClosed(); });
    });
  }

  _stopWatch() {
    const w = this._watch;
    this._watch = null;
    if (w) w.cancel();
  }

  _drop(rej) {
    const t = rej.tuple || {};
    this.emit('drop', {
      localAddress: t.local_address, localPort: t.local_port, localFamily: familyName(t.family),
      remoteAddress: t.remote_address, remotePort: t.remote_port, remoteFamily: familyName(t.family),
      reason: stripPrefix(rej.reason, 'REJECT_REASON_'),
    });
  }

  // _syncLimits sends maxConnections to the daemon, one update at a time,
  // until the daemon has the last value set.
  _syncLimits() {
    if (this._limitsBusy || this._state !== 'listening' || this._maxSent === this._maxWanted) return;
    const want = this._maxWanted;
    this._limitsBusy = true;
    const limits = want === undefined ? {} : { max_connections: want };
    unary(this._client, 'UpdateListener', {
      listener: { id: this._listener.id, spec: { limits } },
      update_mask: { paths: ['spec.limits.max_connections'] },
    }).then(() => {
      this._maxSent = want;
    }, (err) => {
      if (this._state === 'listening') this.emit('error', listenerdError(err, 'maxConnections'));
      this._maxSent = want; // do not retry a refused value
    }).finally(() => {
      this._limitsBusy = false;
      this._syncLimits();
    });
  }

  // _take takes an offered connection; the socket is emitted with
  // 'connection' once the daemon says opened.
  _take(offer) {
    const call = this._client.ServeConnection();
    this._calls++;
    let ended = false;
    const done = () => {
      if (!ended) {
        ended = true;
        this._calls--;
        this._maybeClosed();
      }
    };
    call.on('status', done);
    call.on('error', () => {}); // the socket reports it, if it exists
    call.write({ take: { connection_id: offer.connection_id, handler_id: this._handlerId } });
    // The socket listens for opened; until then it is not the server's.
    return new ListenerdSocket(this, call, offer);
  }

  _opened(socket) {
    this._connections++;
    this._sockets.add(socket);
    this.emit('connection', socket);
  }

  _socketClosed(socket) {
    if (this._sockets.delete(socket)) {
      this._connections--;
      this._maybeClosed();
    }
  }

  // address() is the bound address, as Node's: null unless listening.
  address() {
    return this._state === 'listening' ? { ...this._address } : null;
  }

  getConnections(cb) {
    if (typeof cb === 'function') process.nextTick(cb, null, this._connections);
    return this;
  }

  // close stops accepting (the daemon closes the listener: the port is
  // free once the daemon replies). Open sockets live on, as in Node; 'close'
  // is emitted, and cb called, when the last one is closed.
  close(cb) {
    if (typeof cb === 'function') {
      if (this._state === 'idle' || this._state === 'closing') {
        this.once('close', () => cb(nodeError('ERR_SERVER_NOT_RUNNING', 'Server is not running.')));
      } else {
        this.once('close', cb);
      }
    }
    if (this._state === 'idle') {
      process.nextTick(() => this.emit('close'));
      return this;
    }
    if (this._state === 'closing') return this;
    this._closeWanted = true;
    if (this._state === 'opening' && !this._listener) return this; // _start closes it once created
    this._shutdown();
    return this;
  }

  // _shutdown closes the listener; quiet when it may well be gone already.
  _shutdown(quiet) {
    this._state = 'closing';
    this._stopWatch();
    const drain = this._drainTimeout !== undefined ? msDuration(this._drainTimeout) : UNLIMITED_DRAIN;
    unary(this._client, 'CloseListener', { id: this._listener.id, drain_timeout: drain }).catch((err) => {
      if (!quiet && err.code !== grpc.status.NOT_FOUND) this.emit('error', listenerdError(err, 'close'));
    }).finally(() => {
      this._closeCallDone = true;
      // The daemon ends the attach stream itself; make sure of it.
      if (this._attach) this._attach.cancel();
      this._maybeClosed();
    });
  }

  // _maybeClosed emits 'close' once the listener is closed and nothing of
  // it is left: no socket, no call.
  _maybeClosed() {
    if (this._state !== 'closing' || !this._closeCallDone || this._attach || this._watch ||
        this._connections > 0 || this._calls > 0) {
      return;
    }
    this._teardown();
    this.emit('close');
  }

  _teardown() {
    this._state = 'idle';
    this._stopWatch();
    if (this._attach) this._attach.cancel();
    this._attach = null;
    this._listener = null;
    this._address = null;
    this._early = [];
    this._closeCallDone = false;
    this._maxSent = undefined;
    if (this._client && this._calls === 0) {
      this._client.close();
      this._client = null;
    }
  }
}

function msDuration(ms) {
  const s = Math.floor(ms / 1000);
  return { seconds: s, nanos: Math.round((ms - s * 1000) * 1e6) };
}

// ListenerdSocket is one connection of a listenerd-net server: a Duplex
// whose bytes travel on one ServeConnection stream.
class ListenerdSocket extends Duplex {
  constructor(server, call, offer) {
    super({ allowHalfOpen: server.allowHalfOpen, emitClose: false, autoDestroy: true });
    this.server = server;
    this._server = server;
    this.connecting = false;
    this.pending = false;
    this.connectionId = offer.connection_id;
    this.closeReason = ''; // the daemon's close reason, once closed (PEER_CLOSED, RESET, …)
    this._call = call;
    this._setTuple(offer.tuple || {});
    this._opened = false;
    this._callPaused = false;
    this._peerEnded = false; // the daemon said end (the peer's FIN)
    this._sentEnd = false; // we sent end (our FIN)
    this._daemonClosed = false; // the daemon said closed
    this._callEnded = false; // we ended our side of the stream
    this._bytesRead = 0;
    this._bytesDispatched = 0;
    this._timeout = null;
    this._whenClosed = null; // destroy's end, waiting for the daemon's closed

    call.on('data', (m) => this._message(m));
    call.on('error', (err) => this._callError(err));
    call.on('status', () => this._gone()); // the stream is over, closed or not
  }

  _setTuple(t) {
    this.remoteAddress = t.remote_address;
    this.remotePort = t.remote_port;
    this.remoteFamily = familyName(t.family);
    this.localAddress = t.local_address;
    this.localPort = t.local_port;
    this.localFamily = familyName(t.family);
  }

  get bytesRead() { return this._bytesRead; }

  // bytesWritten counts, as Node's does, the bytes written so far
  // including those still buffered.
  get bytesWritten() { return this._bytesDispatched + this.writableLength; }

  get readyState() {
    if (this.readable && this.writable) return 'open';
    if (this.readable) return 'readOnly';
    if (this.writable) return 'writeOnly';
    return 'closed';
  }

  address() {
    return { address: this.localAddress, family: this.localFamily, port: this.localPort };
  }

  _message(m) {
    switch (m.kind) {
      case 'opened':
        this._opened = true;
        this._setTuple(m.opened.tuple || {});
        if (this.server.pauseOnConnect) {
          // Held unread, as Node's pauseOnConnect: until resume().
          this._pauseCall();
          this.readableFlowing = false;
        }
        this.server._opened(this);
        break;
      case 'data':
        if (this.destroyed) return;
        this._bytesRead += m.data.length;
        this._touch();
        if (!this.push(m.data)) this._pauseCall();
        break;
      case 'end':
        this._peerEnded = true;
        if (!this.destroyed) this.push(null);
        break;
      case 'closed':
        this._closed(m.closed);
        break;
      default:
    }
  }

  // _endCall ends our side of the stream, once: after end or reset, or
  // once the daemon said closed.
  _endCall() {
    if (!this._callEnded) {
      this._callEnded = true;
      this._call.end();
    }
  }

  _pauseCall() {
    if (!this._callPaused) {
      this._callPaused = true;
      this._call.pause();
    }
  }

  _read() {
    if (this._callPaused) {
      this._callPaused = false;
      this._call.resume();
    }
  }

  // _closed: the daemon closed the connection, for reason.
  _closed(c) {
    this._daemonClosed = true;
    this.closeReason = stripPrefix(c.reason, 'CLOSE_REASON_');
    this._endCall();
    if (this._whenClosed) {
      this._gone();
      return;
    }
    switch (this.closeReason) {
      case 'PEER_CLOSED': // both sides ended: the streams finish by themselves
      case 'HANDLER_RESET': // our own destroy()
        if (!this._peerEnded) this.destroy();
        break;
      case 'RESET':
        this.destroy(nodeError('ECONNRESET', 'read ECONNRESET', { syscall: 'read' }));
        break;
      default: // closed by the daemon: kicked, timed out, listener closed…
        this.destroy();
    }
  }

  _callError(err) {
    if (!this._opened) {
      this._call = null; // the offer was gone (taken, timed out, closed): nothing to serve
      return;
    }
    if (this._whenClosed) {
      this._daemonClosed = true;
      this._gone();
      return;
    }
    if (this._daemonClosed || this.destroyed) return;
    this._daemonClosed = true;
    // The daemon resets the socket when its stream breaks.
    this.destroy(nodeError('ECONNRESET', `read ECONNRESET (listenerd: ${err.details || err.message})`,
      { syscall: 'read', cause: err }));
  }

  _write(chunk, encoding, cb) {
    this._send(chunk, cb);
  }

  _writev(chunks, cb) {
    this._send(chunks.length === 1 ? chunks[0].chunk : Buffer.concat(chunks.map((c) => c.chunk)), cb);
  }

  // _send writes chunk to the stream in frames of at most MAX_FRAME bytes;
  // cb waits while the call's write buffer is full (grpc-js's flow
  // control: write() returned false), so our writes return false too.
  _send(chunk, cb) {
    if (this._daemonClosed) {
      cb(nodeError('EPIPE', 'This socket has been ended by the other party', { syscall: 'write' }));
      return;
    }
    let ok = true;
    for (let off = 0; off < chunk.length; off += MAX_FRAME) {
      ok = this._call.write({ data: chunk.subarray(off, off + MAX_FRAME) });
    }
    this._touch();
    const done = () => {
      this._bytesDispatched += chunk.length;
      cb();
    };
    if (ok) done();
    else this._call.once('drain', done);
  }

  // _final is end(): our FIN, once what was written before it is out; the
  // socket stays readable.
  _final(cb) {
    if (!this._daemonClosed) {
      this._sentEnd = true;
      this._call.write({ end: {} });
    }
    cb();
  }

  // _destroy is destroy(): a reset (RST) unless both sides had ended. After
  // both ended (autoDestroy), 'close' waits for the daemon's closed, which
  // says the TCP socket is gone and why (closeReason).
  _destroy(err, cb) {
    if (this._timeout) clearTimeout(this._timeout);
    const finish = () => {
      cb(err);
      process.nextTick(() => {
        if (this._opened) this.server._socketClosed(this);
        this.emit('close', Boolean(err));
      });
    };
    const call = this._call;
    if (this._callPaused && call) {
      this._callPaused = false;
      call.resume(); // drain what is left, to the closed message
    }
    if (call && !this._daemonClosed) {
      if (this._sentEnd && this._peerEnded && !err) {
        this._whenClosed = finish;
        this._endCall();
        return;
      }
      // Pending writes are dropped, as Node drops them. A reset message
      // would wait behind them, so cancel the stream instead: the daemon
      // resets the socket when its stream breaks.
      if (call.writableLength > 0) call.cancel();
      else call.write({ reset: {} });
      this._endCall();
    }
    finish();
  }

  // _gone runs what waited for the daemon's closed (or the stream's end).
  _gone() {
    const f = this._whenClosed;
    this._whenClosed = null;
    if (f) f();
  }

  resetAndDestroy() {
    return this.destroy();
  }

  destroySoon() {
    if (this.writable) this.end();
    if (this.writableFinished) this.destroy();
    else this.once('finish', () => this.destroy());
  }

  // setTimeout emits 'timeout' after ms of inactivity (0 turns it off), as
  // Node's: the socket stays open.
  setTimeout(ms, cb) {
    if (this._timeout) clearTimeout(this._timeout);
    this._timeout = null;
    if (cb) {
      if (ms) this.once('timeout', cb);
      else this.removeListener('timeout', cb);
    }
    if (ms) this._timeout = setTimeout(() => this.emit('timeout'), ms).unref();
    return this;
  }

  _touch() {
    if (this._timeout) this._timeout.refresh();
  }

  // The daemon owns the TCP socket: its no_delay and keepalive are the
  // listener's (spec.no_delay, spec.keepalive).
  setNoDelay() { return this; }

  setKeepAlive() { return this; }
}

function createServer(options, connectionListener) {
  return new Server(options, connectionListener);
}

module.exports = {
  createServer,
  Server,
  ListenerdSocket,
  defaultSocket,
  MAX_FRAME,
  FLOW_WINDOW,
  // The client side is Node's own: clients talk TCP to the daemon's port.
  connect: net.connect,
  createConnection: net.createConnection,
  Socket: net.Socket,
  isIP: net.isIP,
  isIPv4: net.isIPv4,
  isIPv6: net.isIPv6,
};
