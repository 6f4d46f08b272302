// listenerd's dashboard: plain JavaScript against the daemon's HTTP/JSON API
// (v1/...) and its event stream (v1/events, Server-Sent Events). The API is
// the source of truth: an event about a listener makes the page fetch that
// listener and its connections again, and a daemon restart (a new boot id in
// the stream's hello) makes it reload everything.
'use strict';

const TOKEN_KEY = 'listenerd.token';
const TAIL_MAX = 200; // events kept in the tail
const KINDS = [
  'LISTENER_STARTED', 'CONNECTION_OPENED', 'CONNECTION_CLOSED', 'CONNECTION_REJECTED',
  'ACCEPT_ERROR', 'LIMITS_CHANGED', 'LISTENER_CLOSED', 'CONNECTION_HALF_CLOSED',
  'CONNECTION_DATA', 'CONNECTION_QUEUED', 'HANDLER_ATTACHED', 'HANDLER_DETACHED',
  'CONNECTION_TAKEN', 'FAULT_ADDED', 'FAULT_REMOVED', 'FAULT_APPLIED',
  'LISTENER_RECONCILED',
];

const page = {
  bootId: '', // the daemon boot the state shown comes from
  lastSeq: 0, // the last event sequence shown, of that boot
  source: null, // the EventSource
  retry: null, // the timer of the next connect after a failure
  failures: 0,
  cards: new Map(), // listener id -> its <article>
  refreshes: new Map(), // listener id -> {again} while a refresh runs
};

const $ = (sel, root = document) => root.querySelector(sel);
const field = (root, name) => root.querySelector(`[data-field="${name}"]`);

// ---- the API ----

class APIError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

// setToken keeps t for the tab's session ('' forgets it).
function setToken(t) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
  $('#token').placeholder = t ? 'set' : 'none';
}

// takeFragmentToken keeps the token given in the address's fragment
// (http://ADDR/#token=SECRET), then removes it from the address bar and the
// history entry. A browser never sends the fragment, so the token is in no
// request line or log. Parsed by hand, not with URLSearchParams, which
// would turn a base64 token's '+' into a space. True when there was one.
function takeFragmentToken() {
  const parts = location.hash.replace(/^#/, '').split('&');
  const i = parts.findIndex((p) => p.startsWith('token='));
  if (i < 0) return false;
  let t = parts[i].slice('token='.length);
  try {
    t = decodeURIComponent(t);
  } catch {
    // a stray '%': the token as written
  }
  parts.splice(i, 1);
  const rest = parts.filter((p) => p !== '').join('&');
  history.replaceState(history.state, '', `${location.pathname}${location.search}${rest ? `#${rest}` : ''}`);
  if (t.trim()) setToken(t.trim());
  return true;
}

// api calls the HTTP/JSON API and returns the decoded reply, or throws an
// APIError carrying the daemon's message as it was returned.
async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, cache: 'no-store' };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    throw new APIError(`cannot reach listenerd: ${err.message}`, 0);
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const msg = data && typeof data.message === 'string' && data.message !== ''
      ? data.message : `${resp.status} ${resp.statusText}`.trim();
    throw new APIError(msg, resp.status);
  }
  return data || {};
}

const enc = encodeURIComponent;

// ---- following the daemon ----

function setStatus(state, text) {
  const el = $('#conn-status');
  el.dataset.state = state;
  el.textContent = text;
}

function closeSource() {
  if (page.source) {
    page.source.close();
    page.source = null;
  }
}

// connect loads the whole state from the API, then follows the events that
// come after it. It is the start, and the answer to a daemon restart.
async function connect() {
  clearTimeout(page.retry);
  closeSource();
  setStatus('connecting', 'loading…');
  try {
    const status = (await api('GET', 'v1/status')).status || {};
    const list = await api('GET', 'v1/listeners');
    const listeners = list.listeners || [];
    const conns = await Promise.all(listeners.map((l) => listConnections(l.id)
      .catch((err) => { if (err.status === 404) return []; throw err; })));
    if (page.bootId && status.bootId !== page.bootId) missed(page.bootId, status.bootId);
    page.bootId = status.bootId;
    page.lastSeq = Number(list.sequence || 0);
    $('#boot-id').textContent = page.bootId;
    for (const id of [...page.cards.keys()]) removeCard(id);
    listeners.forEach((l, i) => renderListener(l, conns[i]));
    follow(page.bootId, list.sequence || '0');
    page.failures = 0;
  } catch (err) {
    retryLater(err.status === 401 ? `${err.message}; give the API token (above, or open the page as /#token=…)` : err.message);
  }
}

// retryLater says why the page cannot follow the daemon and connects again
// after a delay that doubles up to 30 s.
function retryLater(why) {
  closeSource();
  page.failures++;
  const delay = Math.min(30000, 1000 * 2 ** Math.min(page.failures - 1, 5));
  setStatus('down', `${why} (retrying in ${delay / 1000}s)`);
  page.retry = setTimeout(connect, delay);
}

// follow opens the event stream after sequence `after` of boot `bootId`.
// The browser reconnects it by itself, sending the last event id, so
// nothing the daemon still holds is lost or shown twice.
function follow(bootId, after) {
  const q = new URLSearchParams({ boot_id: bootId, after_sequence: after });
  if (token()) q.set('access_token', token());
  const es = new EventSource(`v1/events?${q}`);
  page.source = es;
  es.addEventListener('hello', (e) => {
    const hello = JSON.parse(e.data);
    $('#boot-id').textContent = hello.bootId;
    if (hello.bootId !== page.bootId) {
      connect(); // a new daemon: what happened in between is gone
      return;
    }
    setStatus('live', 'live');
  });
  for (const kind of KINDS) es.addEventListener(kind, onEvent);
  let ended = ''; // why the daemon ended the stream, from its "status" event
  es.addEventListener('status', (e) => { ended = JSON.parse(e.data).message || ''; });
  es.addEventListener('error', () => {
    if (es !== page.source) return;
    if (es.readyState === EventSource.CLOSED) {
      // Refused (an HTTP error, a proxy's page): the browser gave up.
      retryLater('the event stream was refused');
    } else {
      setStatus('reconnecting', ended ? `reconnecting (${ended})…` : 'reconnecting…');
    }
  });
}

function missed(oldBoot, newBoot) {
  $('#missed-text').textContent = `The daemon restarted (boot ${oldBoot} → ${newBoot}): `
    + 'events in between were missed. Listeners and connections were reloaded from the API.';
  $('#missed').hidden = false;
  tailNote(`daemon restarted: events missed (boot ${oldBoot} → ${newBoot})`);
}

function onEvent(e) {
  const ev = JSON.parse(e.data);
  const seq = Number(ev.sequence);
  if (seq <= page.lastSeq) return;
  page.lastSeq = seq;
  tailEvent(e.type, ev);
  if (ev.listenerId) refresh(ev.listenerId);
}

// refresh fetches one listener and its connections again; events that come
// while it runs make one more round, so a burst costs a few requests.
function refresh(id) {
  const running = page.refreshes.get(id);
  if (running) {
    running.again = true;
    return;
  }
  const r = { again: true };
  page.refreshes.set(id, r);
  (async () => {
    try {
      while (r.again) {
        r.again = false;
        await new Promise((done) => { setTimeout(done, 100); }); // let a burst gather
        await reloadListener(id);
      }
    } catch {
      // The daemon is gone or refused: the stream's state says so.
    } finally {
      page.refreshes.delete(id);
    }
  })();
}

async function reloadListener(id) {
  try {
    const l = (await api('GET', `v1/listeners/${enc(id)}`)).listener;
    renderListener(l, await listConnections(id));
  } catch (err) {
    if (err.status === 404) removeCard(id); // closed and gone
    else throw err;
  }
}

async function listConnections(id) {
  return (await api('GET', `v1/listeners/${enc(id)}/connections`)).connections || [];
}

// ---- rendering ----

const enumWord = (v, prefix) => String(v || '').replace(prefix, '').toLowerCase().replaceAll('_', ' ');
const maxText = (limits) => (limits && limits.maxConnections != null ? String(limits.maxConnections) : 'unlimited');
const peer = (t) => (t ? hostPort(t.remoteAddress, t.remotePort) : '');
const hostPort = (h, p) => (String(h).includes(':') ? `[${h}]:${p}` : `${h}:${p}`);
const clock = (ts) => (ts ? new Date(ts).toLocaleTimeString() : '');

function handlerText(h) {
  if (!h) return 'discard';
  if (h.echo) return 'echo';
  if (h.forward) return `forward to ${h.forward.upstream}`;
  if (h.stream) return 'stream';
  return 'discard';
}

function renderListener(l, conns) {
  let card = page.cards.get(l.id);
  if (!card) {
    card = $('#listener-template').content.firstElementChild.cloneNode(true);
    card.dataset.listenerId = l.id;
    page.cards.set(l.id, card);
    $('#listeners').append(card);
  }
  const spec = l.spec || {};
  const st = l.status || {};
  const limits = spec.limits || {};
  card.dataset.name = l.name || '';
  card.dataset.state = enumWord(st.state, 'STATE_');
  field(card, 'name').textContent = l.name || '(unnamed)';
  field(card, 'id').textContent = l.id;
  field(card, 'state').textContent = card.dataset.state;
  field(card, 'address').textContent = st.boundAddress || hostPort(spec.host, spec.port);
  field(card, 'handler').textContent = handlerText(spec.handler);
  field(card, 'max').textContent = maxText(limits);
  field(card, 'idle').textContent = limits.idleTimeout || 'none';
  field(card, 'open').textContent = st.activeConnections ?? 0;
  field(card, 'accepted').textContent = st.acceptedConnections ?? 0;
  field(card, 'rejected').textContent = st.rejectedConnections ?? 0;
  field(card, 'bytes').textContent = `${st.bytesIn ?? 0} / ${st.bytesOut ?? 0}`;
  field(card, 'lastError').textContent = st.lastError || '';
  const form = $('.limits-form', card);
  form.maxConnections.placeholder = maxText(limits);
  form.idleTimeout.placeholder = limits.idleTimeout || 'none';

  const rows = conns.map((c) => {
    const tr = document.createElement('tr');
    tr.dataset.connectionId = c.id;
    const t = c.tuple || {};
    const cells = [c.id, peer(t), hostPort(t.localAddress, t.localPort),
      enumWord(c.state, 'CONNECTION_STATE_'), clock(c.openTime), c.bytesIn ?? 0, c.bytesOut ?? 0];
    for (const v of cells) {
      const td = document.createElement('td');
      td.textContent = v;
      tr.append(td);
    }
    const kick = document.createElement('button');
    kick.type = 'button';
    kick.className = 'kick';
    kick.textContent = 'Kick';
    kick.setAttribute('aria-label', `Kick connection ${c.id}`);
    const td = document.createElement('td');
    td.append(kick);
    tr.append(td);
    return tr;
  });
  $('.conns tbody', card).replaceChildren(...rows);
  field(card, 'noConns').hidden = rows.length > 0;
  $('#no-listeners').hidden = page.cards.size > 0;
}

function removeCard(id) {
  const card = page.cards.get(id);
  if (card) card.remove();
  page.cards.delete(id);
  $('#no-listeners').hidden = page.cards.size > 0;
}

const SUMMARIES = {
  listenerStarted: (d) => `listening on ${d.boundAddress}`,
  connectionOpened: (d) => `${d.connectionId} from ${peer(d.tuple)}`,
  connectionClosed: (d) => `${d.connectionId} ${enumWord(d.reason, 'CLOSE_REASON_')}, ${d.bytesIn} B in, ${d.bytesOut} B out`,
  connectionRejected: (d) => `${peer(d.tuple)} ${enumWord(d.reason, 'REJECT_REASON_')}`,
  connectionHalfClosed: (d) => d.connectionId,
  connectionQueued: (d) => `${d.connectionId} from ${peer(d.tuple)}, position ${d.position}`,
  acceptError: (d) => d.error,
  limitsChanged: (d) => `max connections ${maxText(d.limits)}`,
  listenerClosed: (d) => `${d.drained} drained, ${d.destroyed} destroyed`,
  connectionData: (d) => `${d.connectionId} ${enumWord(d.direction, 'DIRECTION_')} ${d.length} B`,
  handlerAttached: (d) => `${d.handlerId} ${d.label || ''}`,
  handlerDetached: (d) => `${d.handlerId} ${d.reason || ''}`,
  connectionTaken: (d) => `${d.connectionId} by ${d.handlerId}`,
  faultAdded: (d) => (d.fault ? d.fault.name : ''),
  faultRemoved: (d) => d.name,
  faultApplied: (d) => `${d.name} on ${d.connectionId}`,
  listenerReconciled: (d) => [d.action, d.name, d.change, d.error].filter(Boolean).join(' '),
};

function tailEvent(kind, ev) {
  const key = Object.keys(SUMMARIES).find((k) => ev[k]);
  const li = document.createElement('li');
  li.dataset.kind = kind;
  li.dataset.sequence = String(ev.sequence);
  li.dataset.listenerId = ev.listenerId || '';
  const time = document.createElement('time');
  time.dateTime = ev.time || '';
  time.textContent = clock(ev.time);
  const what = document.createElement('span');
  what.className = 'kind';
  what.textContent = kind.toLowerCase().replaceAll('_', ' ');
  const id = document.createElement('code');
  id.textContent = ev.listenerId || '';
  li.append(time, ' ', what, ' ', id, ' ', key ? SUMMARIES[key](ev[key]) : '');
  tailAdd(li);
}

function tailNote(text) {
  const li = document.createElement('li');
  li.className = 'gap';
  li.textContent = text;
  tailAdd(li);
}

function tailAdd(li) {
  const list = $('#events');
  list.prepend(li);
  while (list.children.length > TAIL_MAX) list.lastElementChild.remove();
}

// ---- forms and buttons ----

// number sends a whole number as a JSON number and anything else as typed,
// so the API, not the page, says what is wrong with it.
const number = (s) => (/^\d+$/.test(s) ? Number(s) : s);

// duration turns a Go-style duration (1m30s, 500ms, -5s) into the API's
// seconds form ("90s"); anything else is sent as typed, for the API to judge.
function duration(s) {
  const m = /^(-?)((?:\d+(?:\.\d+)?(?:h|m|s|ms|us|µs|ns))+)$/.exec(s);
  if (!m) return s;
  const unit = { h: 3600, m: 60, s: 1, ms: 1e-3, us: 1e-6, µs: 1e-6, ns: 1e-9 };
  let secs = 0;
  for (const [, n, u] of m[2].matchAll(/(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)/g)) secs += Number(n) * unit[u];
  return `${m[1]}${secs.toFixed(9).replace(/\.?0+$/, '')}s`;
}

async function submitting(button, errorEl, work) {
  errorEl.textContent = '';
  button.disabled = true;
  try {
    await work();
  } catch (err) {
    errorEl.textContent = err.message;
  } finally {
    button.disabled = false;
  }
}

$('#create-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const f = e.currentTarget;
  const v = (name) => f.elements[name].value.trim();
  const spec = {};
  if (v('host')) spec.host = v('host');
  if (v('port')) spec.port = number(v('port'));
  if (v('maxConnections')) spec.limits = { maxConnections: number(v('maxConnections')) };
  const kind = v('handler');
  spec.handler = { [kind]: kind === 'forward' ? { upstream: v('upstream') } : {} };
  const body = { spec };
  if (v('name')) body.name = v('name');
  $('#create-result').textContent = '';
  submitting($('#create-submit'), $('#create-error'), async () => {
    const l = (await api('POST', 'v1/listeners', body)).listener;
    f.reset();
    $('#create-result').textContent = `Created ${l.id} on ${l.status.boundAddress}.`;
    refresh(l.id);
  });
});

$('#listeners').addEventListener('submit', (e) => {
  e.preventDefault();
  const card = e.target.closest('.listener');
  const f = e.target;
  const limits = {};
  const paths = [];
  const max = f.elements.maxConnections.value.trim();
  const idle = f.elements.idleTimeout.value.trim();
  if (max !== '') {
    paths.push('spec.limits.max_connections');
    if (!/^(unlimited|none)$/i.test(max)) limits.maxConnections = number(max);
  }
  if (idle !== '') {
    paths.push('spec.limits.idle_timeout');
    if (!/^(none|off)$/i.test(idle)) limits.idleTimeout = duration(idle);
  }
  const errorEl = field(card, 'error');
  if (paths.length === 0) {
    errorEl.textContent = 'Give a max connections value ("unlimited" clears it) or an idle timeout ("none" clears it).';
    return;
  }
  const id = card.dataset.listenerId;
  submitting(f.querySelector('button[type="submit"]'), errorEl, async () => {
    const l = (await api('PATCH', `v1/listeners/${enc(id)}?update_mask=${paths.join(',')}`, { spec: { limits } })).listener;
    f.reset();
    renderListener(l, await listConnections(id));
  });
});

$('#listeners').addEventListener('click', (e) => {
  const button = e.target.closest('button');
  if (!button) return;
  const card = button.closest('.listener');
  const id = card.dataset.listenerId;
  if (button.classList.contains('close-listener')) {
    const force = $('input[name="force"]', card).checked ? '?force=true' : '';
    submitting(button, field(card, 'error'), async () => {
      await api('DELETE', `v1/listeners/${enc(id)}${force}`);
      refresh(id);
    });
  } else if (button.classList.contains('kick')) {
    const conn = button.closest('tr').dataset.connectionId;
    submitting(button, field(card, 'error'), async () => {
      await api('DELETE', `v1/connections/${enc(conn)}`);
      refresh(id);
    });
  }
});

$('#token-form').addEventListener('submit', (e) => {
  e.preventDefault();
  setToken($('#token').value.trim());
  $('#token').value = '';
  connect();
});

$('#missed-dismiss').addEventListener('click', () => { $('#missed').hidden = true; });
$('#events-clear').addEventListener('click', () => { $('#events').replaceChildren(); });

// A #token= pasted into the address of an open page: the page does not
// reload, so take it here.
window.addEventListener('hashchange', () => { if (takeFragmentToken()) connect(); });

takeFragmentToken();
$('#token').placeholder = token() ? 'set' : 'none';
connect();
