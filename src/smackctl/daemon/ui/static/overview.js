// overview.js: the overview view. Live from the WebSocket's `overview` frames (no polling):
// the profile, the memory budget bar, the supervisor's memory, one row per model (state,
// memory and its share of the budget, requests in flight and queued, tokens/s computed here
// from tokens_out between frames, time left before idle unload) with load/unload buttons
// for an admin; the remote deployments and their breakers (GET /api/backends, again on each
// `breaker` event); and an admin's profile switch (its dry-run plan, then the switch).

import { get, post, stream, session } from './api.js';
import { $, h, fill, fmtMiB, fmtBytes, fmtDuration, fmtMs, guard, showError, messageOf }
  from './dom.js';
import { renderPlan, progressLine, progressText, failed } from './plan.js';
import * as ws from './ws.js';

const LOADED = new Set(['starting', 'ready', 'backoff']);
const WINDOW = 15; // seconds of tokens_out samples for tokens/s
const samples = new Map(); // model -> [{t, tok}]
const busy = new Map(); // model -> 'loading…' | 'unloading…'
let last = null; // the last status
let visible = false;

function tps(m, loaded) {
  const now = performance.now() / 1000;
  let list = samples.get(m.name) || [];
  const tok = Number(m.tokens_out);
  if (!loaded || !Number.isFinite(tok)) {
    samples.delete(m.name);
    return '';
  }
  if (list.length && tok < list[list.length - 1].tok) list = []; // a restart
  list.push({ t: now, tok });
  while (list.length > 2 && now - list[1].t >= WINDOW) list.shift();
  samples.set(m.name, list);
  const first = list[0];
  const dt = now - first.t;
  if (list.length < 2 || dt < 1) return '';
  return ((tok - first.tok) / dt).toFixed(1);
}

function machineMemory(s) {
  // not in docs/ui.md's status: shown only when the status has it
  const m = s.machine || s.system || null;
  if (m && typeof m === 'object') {
    const total = m.total ?? m.total_ram ?? m.ram_total;
    const avail = m.available ?? m.available_ram ?? m.ram_available;
    const used = m.used ?? m.used_ram ?? (total != null && avail != null ? total - avail : null);
    if (total != null) return { used, total };
  }
  const mem = s.memory || {};
  const total = mem.machine_total ?? mem.total_ram ?? mem.machine_ram;
  const avail = mem.machine_available ?? mem.available_ram;
  if (total != null) return { used: avail != null ? total - avail : null, total };
  return null;
}

function renderMemory(s) {
  const mem = s.memory || {};
  const used = mem.used_ram ?? 0;
  const budget = mem.budget_ram ?? 0;
  const share = budget > 0 ? Math.min(100, (100 * used) / budget) : 0;
  const box = $('#budget');
  const bar = box.querySelector('.bar > span');
  bar.style.width = `${share.toFixed(1)}%`;
  box.classList.toggle('warn', share >= 90);
  box.querySelector('.budget-text').textContent =
    `${fmtBytes(used)} of ${fmtBytes(budget)} used (${share.toFixed(0)}%)` +
    (mem.max_loaded ? `, at most ${mem.max_loaded} loaded` : '');
  $('#mem-supervisor').textContent = fmtBytes(s.rss);
  const machine = machineMemory(s);
  let el = $('#mem-machine');
  if (!machine) {
    if (el) el.remove();
    return;
  }
  if (!el) {
    el = h('p', { id: 'mem-machine' });
    $('#mem-lines').append(el);
  }
  el.textContent = machine.used != null
    ? `machine: ${fmtBytes(machine.used)} used of ${fmtBytes(machine.total)}`
    : `machine: ${fmtBytes(machine.total)}`;
}

function memCell(td, m, budget, loaded) {
  const measured = m.measured_ram ?? m.rss ?? null;
  const bytes = measured ?? m.estimated_ram ?? null;
  const est = measured === null && bytes !== null;
  fill(td,
    h('span', { class: 'mem-text' }, bytes === null ? '' : `${fmtMiB(bytes)}${est ? ' est.' : ''}`),
    h('div', { class: loaded ? 'bar' : 'bar idle' }, h('span')));
  const share = budget > 0 && bytes !== null ? Math.min(100, (100 * bytes) / budget) : 0;
  td.querySelector('.bar > span').style.width = `${share.toFixed(1)}%`;
}

const CELLS = ['name', 'state', 'backend', 'mem', 'inflight', 'queued', 'tps', 'ttl'];

function actionCell(td, m, loaded) {
  const kind = busy.has(m.name) ? 'busy' : m.state === 'stopping' ? 'none'
    : loaded ? 'unload' : 'load';
  if (td.dataset.kind === kind) return;
  td.dataset.kind = kind;
  if (kind === 'busy') {
    fill(td, h('span', { class: 'muted' }, busy.get(m.name)));
  } else if (kind === 'load') {
    fill(td, h('button', { type: 'button', class: 'load', onclick: () => load(m.name) }, 'Load'));
  } else if (kind === 'unload') {
    fill(td, h('button', { type: 'button', class: 'unload', onclick: () => unload(m.name) },
      'Unload'));
  } else {
    fill(td);
  }
}

function renderModels(s) {
  const tbody = $('#models tbody');
  const models = Array.isArray(s.models) ? s.models : [];
  const budget = (s.memory || {}).budget_ram ?? 0;
  const seen = new Set();
  let anchor = null;
  for (const m of models) {
    seen.add(m.name);
    let tr = tbody.querySelector(`tr[data-model="${CSS.escape(m.name)}"]`);
    if (!tr) {
      tr = h('tr', { dataset: { model: m.name } },
        CELLS.map((c) => h('td', { class: c })),
        session.admin ? h('td', { class: 'actions' }) : null);
    }
    // keep the status's order, moving a row only when it is out of place
    const want = anchor ? anchor.nextElementSibling : tbody.firstElementChild;
    if (want !== tr) tbody.insertBefore(tr, want);
    anchor = tr;
    const loaded = LOADED.has(m.state);
    const cell = (c) => tr.querySelector(`td.${c}`);
    cell('name').textContent = m.name;
    cell('name').title = m.last_error ? `last error: ${m.last_error}` : (m.file || '');
    cell('state').textContent = m.phase ? `${m.state} (${m.phase})` : m.state;
    tr.className = `state-${m.state}`;
    cell('backend').textContent = m.backend ?? '';
    memCell(cell('mem'), m, budget, loaded);
    cell('inflight').textContent = String(m.in_flight ?? 0);
    cell('queued').textContent = String(m.queued ?? 0);
    cell('tps').textContent = tps(m, loaded);
    cell('ttl').textContent = m.ttl_left != null ? fmtDuration(m.ttl_left)
      : m.pinned ? 'pinned' : '';
    if (session.admin) actionCell(cell('actions'), m, loaded);
  }
  for (const tr of Array.from(tbody.querySelectorAll('tr[data-model]'))) {
    if (!seen.has(tr.dataset.model)) tr.remove();
  }
  let empty = tbody.querySelector('tr.empty');
  if (!models.length && !empty) {
    empty = h('tr', { class: 'empty' }, h('td', { colspan: 9 }, 'no models in this profile'));
    tbody.append(empty);
  } else if (models.length && empty) empty.remove();
}

function render(s) {
  last = s;
  $('#profile-name').textContent = s.profile ?? '';
  const phase = s.switch_phase && s.switch_phase !== 'active' ? `switch: ${s.switch_phase}` : '';
  $('#switch-phase').textContent = [phase, s.accepting === false ? 'not accepting requests' : '']
    .filter(Boolean).join(' · ');
  $('#sup-version').textContent = [s.version ? `smackctl ${s.version}` : '',
    s.pid ? `pid ${s.pid}` : '', s.uptime != null ? `up ${fmtDuration(s.uptime)}` : '']
    .filter(Boolean).join(', ');
  renderMemory(s);
  const warnings = Array.isArray(s.warnings) ? s.warnings : [];
  fill($('#warnings'), warnings.map((w) => h('li', null, String(w))));
  renderModels(s);
  renderFleet(s.fleet);
}

/** The fleet this supervisor joined (issue 31): its connection and each member heard. */
function renderFleet(fleet) {
  const box = $('#fleet');
  box.hidden = !fleet;
  if (!fleet) return;
  $('#fleet-state').textContent = `${fleet.name} at ${fleet.url}: ` +
    (fleet.connected ? 'connected' : `not connected (${fleet.error || '…'})`);
  const rows = (fleet.members || []).map((m) => {
    const models = Object.entries(m.models || {})
      .map(([name, v]) => (v.loaded ? `${name}*` : name)).sort().join(', ');
    return h('tr', { 'data-member': m.name },
      h('td', null, m.name + (m.draining ? ' (draining)' : '')),
      h('td', null, models || '–'),
      h('td', { class: 'num' }, fmtBytes(m.memory && m.memory.free)),
      h('td', { class: 'num' }, `${m.in_flight} running, ${m.queued} queued`),
      h('td', { class: 'num' }, `${Math.round(m.seen)} s ago`));
  });
  fill($('#fleet tbody'), rows.length ? rows
    : [h('tr', { class: 'empty' }, h('td', { colspan: 5 }, 'no other member heard yet'))]);
}

async function runLoad(name, what, fn) {
  busy.set(name, what);
  if (last) renderModels(last);
  try {
    await fn();
  } catch (err) {
    showError(`${name}: ${messageOf(err)}`);
  } finally {
    busy.delete(name);
    if (last) renderModels(last);
  }
}

function load(name) {
  return runLoad(name, 'loading…', async () => {
    let error = null;
    await stream('POST', `/api/models/${encodeURIComponent(name)}/load`, {}, (ev) => {
      if (ev && ev.event === 'error') error = ev;
      const note = $(`#models tr[data-model="${CSS.escape(name)}"] td.actions span`);
      if (note && ev && ev.event === 'progress' && ev.phase) note.textContent = `${ev.phase}…`;
    });
    if (error) {
      throw new Error(`load failed: ${error.message || 'error'}` +
        `${error.hint ? ` (fix: ${error.hint})` : ''}`);
    }
  });
}

function unload(name) {
  return runLoad(name, 'unloading…', () =>
    post(`/api/models/${encodeURIComponent(name)}/unload`, {}));
}

// ---- remote deployments

async function refreshDeployments() {
  const tbody = $('#deployments tbody');
  let view;
  try {
    view = await get('/api/backends');
  } catch (err) {
    fill(tbody, h('tr', { class: 'empty' }, h('td', { colspan: 8 }, messageOf(err))));
    return;
  }
  const remote = ((view && view.deployments) || []).filter((d) => d.kind === 'remote');
  if (!remote.length) {
    fill(tbody, h('tr', { class: 'empty' }, h('td', { colspan: 8 }, 'no remote deployments')));
    return;
  }
  fill(tbody, remote.map((d) => {
    const b = d.breaker || {};
    const breaker = b.state && b.state !== 'closed' && b.why ? `${b.state}: ${b.why}` : b.state;
    return h('tr', { dataset: { deployment: d.name }, class: `breaker-${b.state || 'closed'}` },
      h('td', { class: 'name' }, d.name),
      h('td', { class: 'url' }, d.url || d.backend || ''),
      h('td', { class: 'breaker' }, breaker || ''),
      h('td', { class: 'healthy' }, d.healthy ? 'yes' : `no${d.health_error ? `: ${d.health_error}` : ''}`),
      h('td', { class: 'inflight' }, String(d.in_flight ?? 0)),
      h('td', { class: 'ttfb' }, fmtMs(d.ttfb_ms)),
      h('td', { class: 'served' }, String(d.served ?? 0)),
      h('td', { class: 'failed' }, String(d.failed ?? 0)));
  }));
}

// ---- profile switch (admin)

async function loadProfiles() {
  const select = $('#switch-profile');
  let p;
  try {
    p = await get('/api/profiles');
  } catch (err) {
    showError(messageOf(err));
    return;
  }
  const chosen = select.value;
  const available = Array.isArray(p && p.available) ? p.available : [];
  fill(select, available.map((a) => h('option', { value: a.path },
    a.path === p.path || a.name === p.active ? `${a.name} (active)` : a.name)));
  if (chosen && available.some((a) => a.path === chosen)) select.value = chosen;
  $('#switch-plan').disabled = !available.length;
}

async function planSwitch() {
  const path = $('#switch-profile').value;
  if (!path) return;
  const box = $('#plan');
  $('#switch-apply').hidden = true;
  fill(box, h('p', { class: 'muted' }, 'planning…'));
  const plan = await post('/api/profiles/switch', { path, dry_run: true });
  fill(box, renderPlan(plan));
  $('#switch-apply').dataset.path = path;
  $('#switch-apply').hidden = false;
}

async function applySwitch() {
  const apply = $('#switch-apply');
  const path = apply.dataset.path || $('#switch-profile').value;
  apply.hidden = true;
  const box = $('#plan');
  const lines = h('ul', { class: 'progress-lines' });
  fill(box, h('p', null, `switching to ${path}…`), lines);
  $('#switch-plan').disabled = true;
  try {
    const lastLine = await stream('POST', '/api/profiles/switch', { path }, (ev) => {
      lines.append(progressLine(ev));
    });
    if (failed(lastLine)) showError(progressText(lastLine));
  } finally {
    $('#switch-plan').disabled = false;
    loadProfiles();
  }
}

export default {
  init() {
    ws.on('overview', (f) => { if (f.data) render(f.data); });
    ws.on('event', (f) => {
      const ev = f.data || {};
      if ((ev.event ?? ev.type) === 'breaker' && visible && session.admin) refreshDeployments();
    });
    $('#switch-plan').addEventListener('click', guard(planSwitch));
    $('#switch-apply').addEventListener('click', guard(applySwitch));
    $('#switch-profile').addEventListener('change', () => {
      $('#switch-apply').hidden = true;
      $('#plan').replaceChildren();
    });
  },
  show() {
    visible = true;
    if (session.admin) refreshDeployments(); // GET /api/backends is an admin's
    if (session.admin) loadProfiles();
  },
  hide() {
    visible = false;
  },
};
