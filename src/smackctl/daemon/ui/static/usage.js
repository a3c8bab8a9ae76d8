// usage.js: the usage view. GET /api/usage?by=…&bucket=…&since=… (a key sees its own) as
// four uPlot charts (requests, tokens, errors, average latency; one series per model, key or
// deployment), a table of the rows with totals, and a CSV link (the same query with
// &format=csv). An error of the API (a 403…) is shown in #usage-error.

import uPlot from './vendor/uPlot.esm.js';
import { get, query, session } from './api.js';
import { $, h, fill, fmtNum, messageOf } from './dom.js';

const CHARTS = [
  ['requests', 'requests', (r) => r.requests ?? 0],
  ['tokens', 'tokens (in + out)', (r) => (r.tokens_in ?? 0) + (r.tokens_out ?? 0)],
  ['errors', 'errors', (r) => r.errors ?? 0],
  ['latency', 'average ms', (r) => (r.avg_ms ?? null)],
];
const PALETTE = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777',
  '#65a30d', '#9333ea', '#ea580c', '#0d9488', '#4b5563'];
const HEIGHT = 220;
const plots = new Map(); // chart name -> uPlot
let seq = 0;
let rows = [];

/** A bucket (a unix time, "YYYY-MM-DD", "YYYY-MM-DD HH:MM", ISO…, all UTC) in seconds. */
function bucketTime(b) {
  if (typeof b === 'number') return b > 1e11 ? b / 1000 : b;
  if (typeof b !== 'string') return NaN;
  let s = b.trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Number(s);
  if (/^\d{4}-\d{2}-\d{2}$/.test(s)) s += 'T00:00:00Z';
  else {
    s = s.replace(' ', 'T');
    if (/T\d{2}$/.test(s)) s += ':00';
    if (!/(Z|[+-]\d{2}:?\d{2})$/i.test(s)) s += 'Z';
  }
  return Date.parse(s) / 1000;
}

function bucketOf(r) {
  return r.bucket ?? r.day ?? r.hour ?? null;
}

function params() {
  const range = Number($('#usage-range').value) || 7 * 86400;
  return {
    by: $('#usage-by').value,
    bucket: $('#usage-bucket').value,
    since: Math.floor(Date.now() / 1000) - range,
  };
}

function seriesName(r, by) {
  const v = r[by];
  if (v === null || v === undefined || v === '') return by === 'key' ? '(no key)' : '(none)';
  return String(v);
}

function colors() {
  const css = getComputedStyle(document.documentElement);
  return {
    fg: css.getPropertyValue('--muted').trim() || '#666',
    grid: css.getPropertyValue('--grid').trim() || '#ddd',
  };
}

function destroyCharts() {
  for (const p of plots.values()) p.destroy();
  plots.clear();
}

function renderCharts(by) {
  destroyCharts();
  const times = Array.from(new Set(rows.map((r) => bucketTime(bucketOf(r)))))
    .filter((t) => Number.isFinite(t)).sort((a, b) => a - b);
  const names = Array.from(new Set(rows.map((r) => seriesName(r, by)))).sort();
  for (const [id] of CHARTS) fill($(`#chart-${id}`));
  if (!times.length) {
    for (const [id] of CHARTS) {
      $(`#chart-${id}`).append(h('p', { class: 'muted' }, 'no requests in this range'));
    }
    return;
  }
  const index = new Map(times.map((t, i) => [t, i]));
  // the range asked for, not uPlot's guess from the points (one point spans years)
  const now = Math.floor(Date.now() / 1000);
  const lo = Math.min(params().since, times[0]);
  const hi = Math.max(now, times[times.length - 1]);
  const { fg, grid } = colors();
  for (const [id, label, value] of CHARTS) {
    const counts = id !== 'latency';
    const data = [times];
    for (const name of names) {
      const ys = new Array(times.length).fill(counts ? 0 : null);
      for (const r of rows) {
        if (seriesName(r, by) !== name) continue;
        const i = index.get(bucketTime(bucketOf(r)));
        if (i === undefined) continue;
        const v = value(r);
        ys[i] = counts ? (ys[i] ?? 0) + (v ?? 0) : v;
      }
      data.push(ys);
    }
    const el = $(`#chart-${id}`);
    const opts = {
      width: Math.max(300, el.clientWidth || 600),
      height: HEIGHT,
      scales: { x: { time: true, range: () => [lo, hi] } },
      series: [
        {},
        ...names.map((name, i) => ({
          label: name,
          stroke: PALETTE[i % PALETTE.length],
          width: 2,
          points: { show: true, size: 5 },
          spanGaps: !counts,
          value: (u, v) => (v === null || v === undefined ? '–' : fmtNum(v, counts ? 0 : 1)),
        })),
      ],
      axes: [
        { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } },
        { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid }, size: 60,
          label, labelSize: 20 },
      ],
      legend: { show: true },
    };
    plots.set(id, new uPlot(opts, data, el));
  }
}

const COLS = ['requests', 'tokens_in', 'tokens_out', 'errors', 'avg_ms', 'seconds', 'cost'];

function cellText(col, v) {
  if (v === null || v === undefined) return '';
  if (col === 'cost') return Number(v).toFixed(4);
  if (col === 'avg_ms' || col === 'seconds') return fmtNum(Number(v), 1);
  return String(v);
}

function renderTable(by) {
  const table = $('#usage-table');
  table.querySelector('th.by').textContent = by;
  const body = table.querySelector('tbody');
  if (!rows.length) {
    fill(body, h('tr', { class: 'empty' }, h('td', { colspan: 9 }, 'no usage in this range')));
    fill(table.querySelector('tfoot'));
    return;
  }
  fill(body, rows.map((r) => h('tr', null,
    h('td', { class: 'bucket' }, String(bucketOf(r) ?? '')),
    h('td', { class: 'by' }, seriesName(r, by)),
    COLS.map((c) => h('td', { class: `num ${c}` }, cellText(c, r[c]))))));
  const sum = (c) => rows.reduce((a, r) => a + (Number(r[c]) || 0), 0);
  const n = sum('requests');
  const latency = n ? rows.reduce((a, r) => a + (Number(r.avg_ms) || 0) * (r.requests || 0), 0) / n
    : null;
  const totals = { requests: n, tokens_in: sum('tokens_in'), tokens_out: sum('tokens_out'),
    errors: sum('errors'), avg_ms: latency, seconds: sum('seconds'), cost: sum('cost') };
  fill(table.querySelector('tfoot'), h('tr', null,
    h('td', null, 'total'), h('td'),
    COLS.map((c) => h('td', { class: `num ${c}` }, cellText(c, totals[c])))));
}

async function refresh() {
  const p = params();
  const q = query(p);
  const csv = $('#usage-csv');
  csv.href = `/api/usage${q}&format=csv`;
  csv.setAttribute('download', `smackctl-usage-${p.by}-${p.bucket}.csv`);
  const mine = ++seq;
  const err = $('#usage-error');
  let data;
  try {
    data = await get(`/api/usage${q}`);
  } catch (e) {
    if (mine !== seq) return;
    err.textContent = messageOf(e);
    err.hidden = false;
    rows = [];
    destroyCharts();
    renderTable(p.by);
    return;
  }
  if (mine !== seq) return;
  err.textContent = '';
  err.hidden = true;
  rows = Array.isArray(data) ? data : (data && Array.isArray(data.rows) ? data.rows : []);
  renderCharts(p.by);
  renderTable(p.by);
}

function resize() {
  for (const [id, p] of plots) {
    const el = $(`#chart-${id}`);
    if (el && el.clientWidth) p.setSize({ width: Math.max(300, el.clientWidth), height: HEIGHT });
  }
}

export default {
  init() {
    if (!session.admin) {
      const opt = $('#usage-by option[value="key"]');
      if (opt) opt.remove();
    }
    for (const id of ['#usage-by', '#usage-bucket', '#usage-range']) {
      $(id).addEventListener('change', () => refresh());
    }
    let timer = null;
    window.addEventListener('resize', () => {
      clearTimeout(timer);
      timer = setTimeout(resize, 150);
    });
  },
  show() {
    return refresh();
  },
  hide() {},
};
