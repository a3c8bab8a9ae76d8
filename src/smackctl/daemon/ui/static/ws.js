// ws.js: the page's one WebSocket to /api/ws. It reconnects with backoff, shows its state
// in #live (class on/off), hands each frame to the handlers of its `type`, and is the one
// place that knows which topics the page wants: since a later `subscribe` replaces the
// earlier one, it sends the whole set (and the logs' model) whenever it changes and on
// every (re)connect. `overview`, `activity` and `events` stay subscribed; `logs` only while
// a view asks for it (followLogs / stopLogs). A subscribe naming a topic the viewer may not
// follow is refused whole, so `configure` says which it may (events: metrics or admin
// scope; logs: admin).

import { showError } from './dom.js';

const handlers = new Map(); // type -> Set of functions; '_open' and '_close' too
const BASE = new Set(['overview', 'activity', 'events']);
const may = { events: true, logs: true };
const MIN_WAIT = 500;
const MAX_WAIT = 15000;

let sock = null;
let opened = false; // whether the current socket ever opened
let wait = MIN_WAIT;
let timer = null;
let logsWanted = false;
let logsModel = null; // null: the supervisor's log
let started = false;

export let hello = null;

/** Call fn(frame) for each frame of this type; returns a function that removes it. */
export function on(type, fn) {
  if (!handlers.has(type)) handlers.set(type, new Set());
  handlers.get(type).add(fn);
  return () => handlers.get(type).delete(fn);
}

function dispatch(type, frame) {
  const fns = handlers.get(type);
  if (!fns) return;
  for (const fn of Array.from(fns)) {
    try {
      fn(frame);
    } catch (err) {
      console.error(`handler of ${type} frames failed`, err);
    }
  }
}

export function isOpen() {
  return sock !== null && sock.readyState === WebSocket.OPEN;
}

/** Send one op; false when the socket is not open (nothing is queued). */
export function send(op) {
  if (!isOpen()) return false;
  sock.send(JSON.stringify(op));
  return true;
}

/** Which topics the viewer may follow: {events: bool, logs: bool} (before connect()). */
export function configure(allowed) {
  Object.assign(may, allowed);
  if (!may.events) BASE.delete('events');
  else BASE.add('events');
  if (!may.logs) logsWanted = false;
}

function subscribe() {
  const topics = Array.from(BASE);
  const op = { op: 'subscribe', topics };
  if (logsWanted && may.logs) {
    topics.push('logs');
    if (logsModel) op.model = logsModel;
  }
  send(op);
}

/** Follow a runner's log (model name; null or '' for the supervisor's). */
export function followLogs(model) {
  if (!may.logs) return;
  const m = model || null;
  if (logsWanted && logsModel === m) return;
  logsWanted = true;
  logsModel = m;
  subscribe();
}

export function stopLogs() {
  if (!logsWanted) return;
  logsWanted = false;
  logsModel = null;
  subscribe();
}

function setLive(on) {
  const el = document.getElementById('live');
  if (!el) return;
  el.classList.toggle('on', on);
  el.classList.toggle('off', !on);
  el.textContent = on ? 'live' : 'offline';
  el.title = on ? 'live updates connected' : 'live updates disconnected: reconnecting';
}

function url() {
  const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${window.location.host}/api/ws`;
}

async function sessionGone() {
  // a socket that never opened may mean the session ended: the login page then
  try {
    const res = await fetch('/ui/session', { credentials: 'same-origin', cache: 'no-store' });
    return res.status === 401;
  } catch {
    return false;
  }
}

function schedule() {
  clearTimeout(timer);
  const jitter = Math.random() * 0.3 * wait;
  timer = setTimeout(open, wait + jitter);
  wait = Math.min(MAX_WAIT, wait * 2);
}

function open() {
  timer = null;
  opened = false;
  let s;
  try {
    s = new WebSocket(url());
  } catch (err) {
    console.error('WebSocket', err);
    schedule();
    return;
  }
  sock = s;
  s.addEventListener('open', () => {
    if (sock !== s) return;
    opened = true;
    wait = MIN_WAIT;
    setLive(true);
    subscribe();
    dispatch('_open', null);
  });
  s.addEventListener('message', (msg) => {
    if (sock !== s) return;
    let frame;
    try {
      frame = JSON.parse(msg.data);
    } catch {
      return;
    }
    if (!frame || typeof frame !== 'object') return;
    if (frame.type === 'hello') hello = frame;
    if (frame.type === 'error' && (frame.id === undefined || frame.id === null)) {
      const e = frame.error || {};
      showError(e.message || 'the supervisor could not read a frame');
    }
    dispatch(frame.type, frame);
  });
  s.addEventListener('close', async () => {
    if (sock !== s) return;
    const wasOpen = opened;
    sock = null;
    setLive(false);
    dispatch('_close', null);
    if (!wasOpen && (await sessionGone())) {
      window.location.assign('/ui/login');
      return;
    }
    schedule();
  });
  // 'error' is always followed by 'close', where the reconnect is planned
}

/** Open the socket (once); it reconnects by itself. */
export function connect() {
  if (started) return;
  started = true;
  setLive(false);
  open();
  // come back at once when the tab is shown again or the network returns
  const now = () => {
    if (!sock && timer !== null) {
      clearTimeout(timer);
      wait = MIN_WAIT;
      open();
    }
  };
  window.addEventListener('online', now);
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') now();
  });
}
