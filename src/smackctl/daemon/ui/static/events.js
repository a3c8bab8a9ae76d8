// events.js: the events & logs view. The supervisor's events (the WebSocket's `events`
// topic, subscribed while the page is open; the last hour's kept events from
// GET /api/events?follow=0 to start with) newest first, filtered live by type or model; and
// a log (the supervisor's or a model runner's): its last 200 lines from GET /api/logs, then
// the lines the WebSocket's `logs` topic sends, followed only while this view is open
// (logs: admin only; events: metrics or admin scope).

import { getText, query, request, session } from './api.js';
import { $, h, fill, fmtTime, text, messageOf } from './dom.js';
import * as ws from './ws.js';

const MAX_EVENTS = 500;
const MAX_LINES = 2000;
const seen = new Set(); // event ids shown
let lines = [];
let pending = null; // log frames that came while the first lines were being read
let logSeq = 0;
let visible = false;

// ---- events

function typeOf(ev) {
  return String(ev.event ?? ev.type ?? 'event');
}

const SKIP = new Set(['event', 'type', 'id', 'at']);

function fields(ev) {
  return Object.entries(ev)
    .filter(([k, v]) => !SKIP.has(k) && v !== null && v !== undefined && v !== '')
    .map(([k, v]) => `${k}=${text(v)}`)
    .join(' ');
}

function matches(li, needle) {
  if (!needle) return true;
  return li.dataset.type.toLowerCase().includes(needle) ||
    (li.dataset.model || '').toLowerCase().includes(needle);
}

function addEvent(ev, newest = true) {
  if (!ev || typeof ev !== 'object') return;
  if (ev.id !== undefined && ev.id !== null) {
    if (seen.has(ev.id)) return;
    seen.add(ev.id);
  }
  const type = typeOf(ev);
  const model = ev.model ?? ev.deployment ?? ev.profile ?? '';
  const li = h('li', { class: `ev ev-${type.replace(/[^a-z0-9_-]/gi, '_')}`,
    dataset: { type, model: String(model), id: ev.id ?? '' } },
  h('span', { class: 'time' }, fmtTime(ev.at)),
  h('span', { class: 'type' }, type),
  h('span', { class: 'fields' }, fields(ev)));
  li.hidden = !matches(li, $('#events-filter').value.trim().toLowerCase());
  const list = $('#events');
  if (newest) list.prepend(li);
  else list.append(li);
  while (list.children.length > MAX_EVENTS) {
    const gone = list.lastElementChild;
    seen.delete(Number(gone.dataset.id));
    seen.delete(gone.dataset.id);
    gone.remove();
  }
}

function filterEvents() {
  const needle = $('#events-filter').value.trim().toLowerCase();
  for (const li of $('#events').children) li.hidden = !matches(li, needle);
}

/** The kept events of the last hour (SSE text, ended at once with follow=0). */
async function backfill() {
  if (!session.admin && session.scope !== 'metrics') return; // not everyone may read them
  const since = Math.floor(Date.now() / 1000) - 3600;
  let body;
  try {
    const res = await request('GET', `/api/events${query({ follow: 0, since })}`, undefined,
      { login: false });
    body = await res.text();
  } catch {
    return; // not everyone may read them; the live ones still come
  }
  const events = [];
  for (const block of body.split(/\n\n+/)) {
    const data = block.split('\n').filter((l) => l.startsWith('data:'))
      .map((l) => l.slice(5).replace(/^ /, '')).join('\n');
    if (!data) continue;
    try {
      events.push(JSON.parse(data));
    } catch {
      // a comment or a keepalive
    }
  }
  events.sort((a, b) => (b.at ?? 0) - (a.at ?? 0));
  // not seen live: older than every event shown, so they go last (addEvent skips the seen)
  for (const ev of events) addEvent(ev, false);
}

// ---- logs

function logModel() {
  return $('#logs-model').value || null;
}

function renderLog() {
  const pre = $('#logs');
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20;
  const needle = $('#logs-filter').value;
  const shown = needle ? lines.filter((l) => l.includes(needle)) : lines;
  pre.textContent = shown.length ? `${shown.join('\n')}\n` : '';
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}

function addLines(more) {
  lines.push(...more.map(String));
  if (lines.length > MAX_LINES) lines = lines.slice(lines.length - MAX_LINES);
}

async function openLog() {
  const model = logModel();
  const mine = ++logSeq;
  lines = [];
  pending = [];
  $('#logs').textContent = 'reading…';
  ws.followLogs(model);
  let first = '';
  try {
    first = await getText(`/api/logs${query({ model, lines: 200 })}`);
  } catch (err) {
    if (mine !== logSeq) return;
    first = '';
    lines = [`(${messageOf(err)})`];
  }
  if (mine !== logSeq) return;
  addLines(first.split('\n').filter((l, i, all) => l || i < all.length - 1));
  addLines(pending);
  pending = null;
  renderLog();
}

function onLog(frame) {
  if (!visible) return;
  const model = frame.model || null;
  if (model !== logModel()) return;
  const more = Array.isArray(frame.lines) ? frame.lines : [];
  if (pending) {
    pending.push(...more);
    return;
  }
  addLines(more);
  renderLog();
}

function fillModels(status) {
  const select = $('#logs-model');
  const names = (Array.isArray(status.models) ? status.models : []).map((m) => m.name);
  const have = Array.from(select.options).map((o) => o.value).filter(Boolean);
  if (names.length === have.length && names.every((n, i) => n === have[i])) return;
  const chosen = select.value;
  fill(select, h('option', { value: '' }, 'supervisor'),
    names.map((n) => h('option', { value: n }, n)));
  select.value = names.includes(chosen) ? chosen : '';
  if (select.value !== chosen && visible) openLog();
}

export default {
  init() {
    ws.on('event', (f) => addEvent(f.data));
    ws.on('log', onLog);
    ws.on('overview', (f) => { if (f.data) fillModels(f.data); });
    $('#events-filter').addEventListener('input', filterEvents);
    $('#logs-filter').addEventListener('input', renderLog);
    $('#logs-model').addEventListener('change', () => openLog());
    backfill();
  },
  show() {
    visible = true;
    if (session.admin) return openLog(); // logs are an admin's (GET /api/logs, `logs` topic)
    return undefined;
  },
  hide() {
    visible = false;
    logSeq++;
    pending = null;
    ws.stopLogs();
  },
};
