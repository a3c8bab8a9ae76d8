// activity.js: the activity view. GET /api/activity when the view opens (requests in flight
// and the recent ones), then each `request` frame of the WebSocket's `activity` topic
// replaces its row by id (a request's frame comes as it starts and again as it ends). A
// failed request (status >= 400) gets class `failed` and a row under it with its error and
// the fix.

import { get } from './api.js';
import { $, h, fill, fmtMs, fmtTime, guard } from './dom.js';
import * as ws from './ws.js';

const MAX_ROWS = 300;
const COLUMNS = 9;
const rows = new Map(); // id -> row

function failed(r) {
  return typeof r.status === 'number' && r.status >= 400;
}

function tokens(r) {
  if (r.tokens_in == null && r.tokens_out == null) return '';
  return `${r.tokens_in ?? '–'} / ${r.tokens_out ?? '–'}`;
}

/** The row's <tr>, and the error row under it when it failed. */
function build(r) {
  const tr = h('tr', { dataset: { id: r.id }, class: failed(r) ? 'failed' : r.status == null ? 'running' : null },
    h('td', { class: 'at' }, fmtTime(r.at)),
    h('td', { class: 'model' }, r.model ?? ''),
    h('td', { class: 'deployment' }, r.deployment ?? ''),
    h('td', { class: 'key' }, r.key ?? ''),
    h('td', { class: 'route' }, r.route ?? ''),
    h('td', { class: 'status' }, r.status == null ? 'running' : String(r.status)),
    h('td', { class: 'ttft' }, fmtMs(r.ttft_ms)),
    h('td', { class: 'tokens' }, tokens(r)),
    h('td', { class: 'ms' }, fmtMs(r.ms)));
  if (!failed(r)) return [tr];
  const err = h('tr', { class: 'error-row', dataset: { for: r.id } },
    h('td', { class: 'error', colspan: 5 }, r.error || `status ${r.status}`),
    h('td', { class: 'hint', colspan: COLUMNS - 5 }, r.hint ? `fix: ${r.hint}` : ''));
  return [tr, err];
}

function order() {
  // in flight first, then newest first
  return Array.from(rows.values()).sort((a, b) => {
    const fa = a.status == null ? 1 : 0;
    const fb = b.status == null ? 1 : 0;
    return fb - fa || (b.at ?? 0) - (a.at ?? 0);
  });
}

function trim() {
  if (rows.size <= MAX_ROWS) return;
  const keep = order().slice(0, MAX_ROWS);
  const ids = new Set(keep.map((r) => r.id));
  for (const id of Array.from(rows.keys())) {
    if (!ids.has(id)) {
      rows.delete(id);
      removeRow(id);
    }
  }
}

function tbody() {
  return $('#activity tbody');
}

function find(id) {
  return tbody().querySelector(`tr[data-id="${CSS.escape(String(id))}"]`);
}

function removeRow(id) {
  const tr = find(id);
  if (!tr) return;
  const next = tr.nextElementSibling;
  if (next && next.classList.contains('error-row')) next.remove();
  tr.remove();
}

function emptyNote() {
  const body = tbody();
  const empty = body.querySelector('tr.empty');
  if (rows.size && empty) empty.remove();
  if (!rows.size && !empty) {
    body.append(h('tr', { class: 'empty' }, h('td', { colspan: COLUMNS }, 'no requests yet')));
  }
}

function renderAll() {
  fill(tbody(), order().map(build));
  emptyNote();
}

/** One row changed: replace it in place, or put a new one at the top. */
function upsert(r) {
  if (!r || r.id === undefined || r.id === null) return;
  const id = String(r.id);
  const row = { ...(rows.get(id) || {}), ...r, id };
  rows.set(id, row);
  const els = build(row);
  const tr = find(id);
  if (tr) {
    const next = tr.nextElementSibling;
    if (next && next.classList.contains('error-row')) next.remove();
    tr.replaceWith(...els);
  } else {
    const body = tbody();
    // a new request goes first (after nothing); a late row from the past is placed by time
    const after = Array.from(body.querySelectorAll('tr[data-id]')).find((t) => {
      const other = rows.get(t.dataset.id);
      return other && other.status != null && (other.at ?? 0) < (row.at ?? 0);
    });
    if (row.status == null || !after) {
      if (row.status == null) body.prepend(...els);
      else body.append(...els);
    } else after.before(...els);
  }
  trim();
  emptyNote();
}

async function refresh() {
  const data = await get('/api/activity?limit=300');
  const all = [...((data && data.in_flight) || []), ...((data && data.recent) || [])];
  const listed = new Set(all.map((r) => String(r && r.id)));
  for (const [id, r] of Array.from(rows)) {
    if (r.status == null && !listed.has(id)) rows.delete(id); // its end was missed
  }
  for (const r of all) {
    if (!r || r.id === undefined || r.id === null) continue;
    const id = String(r.id);
    const have = rows.get(id);
    // a frame may have told us more already (a request that ended since)
    if (have && have.status != null && r.status == null) continue;
    rows.set(id, { ...(have || {}), ...r, id });
  }
  trim();
  renderAll();
}

let visible = false;

export default {
  init() {
    ws.on('request', (f) => upsert(f.data));
    // frames were missed while the socket was down
    ws.on('_open', () => { if (visible) guard(refresh)(); });
  },
  show() {
    visible = true;
    return guard(refresh)();
  },
  hide() {
    visible = false;
  },
};
