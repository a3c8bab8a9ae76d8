// playground.js: the playground view. A chat with a model the viewer may use (GET
// /v1/models), or two side by side (compare): each column keeps its own conversation and
// streams its answer over the page's WebSocket (op `chat`, then `start`, `chunk`… `done` or
// `error` frames for its id; `cancel` stops it). Each column shows the answer as it comes,
// the start frame's x-smackctl-* and x-request-id headers, and its stats (first token ms,
// tokens, tokens/s computed here).

import { get } from './api.js';
import { $, h, fill, fmtMs, guard, showError } from './dom.js';
import * as ws from './ws.js';

let counter = 0;
let loaded = false;

function column(name) {
  return { name, el: null, messages: [], active: null };
}

const A = column('a');
const B = column('b');
const COLUMNS = [A, B];

function part(col, cls) {
  return col.el.querySelector(`.${cls}`);
}

function num(id, integer = false) {
  const raw = $(id).value.trim();
  if (!raw) return undefined;
  const n = Number(raw);
  if (!Number.isFinite(n)) return undefined;
  return integer ? Math.round(n) : n;
}

function anyActive() {
  return COLUMNS.some((c) => c.active);
}

function buttons() {
  const active = anyActive();
  $('#pg-send').disabled = active;
  $('#pg-stop').disabled = !active;
}

function turn(role, content) {
  return h('div', { class: `turn ${role}` }, h('span', { class: 'role' }, role), h('div', { class: 'content' }, content));
}

function renderHistory(col, pendingUser) {
  const turns = col.messages.map((m) => turn(m.role, m.content));
  if (pendingUser !== undefined) turns.push(turn('user', pendingUser));
  fill(part(col, 'history'), turns);
}

function setError(col, message) {
  const el = part(col, 'error');
  el.textContent = message;
  el.hidden = !message;
}

function renderStats(col) {
  const a = col.active;
  if (!a) return;
  const now = a.endedAt ?? performance.now();
  const tokens = a.usage && Number.isFinite(a.usage.completion_tokens)
    ? a.usage.completion_tokens : a.chunks;
  const parts = [];
  if (a.firstAt !== null) parts.push(`first token ${fmtMs(a.firstAt - a.sentAt)}`);
  parts.push(`${tokens} token${tokens === 1 ? '' : 's'}`);
  if (a.firstAt !== null && now - a.firstAt > 0 && tokens > 1) {
    parts.push(`${(((tokens - 1) * 1000) / (now - a.firstAt)).toFixed(1)} tokens/s`);
  }
  if (a.usage && Number.isFinite(a.usage.prompt_tokens)) {
    parts.push(`${a.usage.prompt_tokens} prompt tokens`);
  }
  if (a.endedAt !== undefined) parts.push(`total ${fmtMs(a.endedAt - a.sentAt)}`);
  if (a.stopped) parts.push('stopped');
  part(col, 'stats').textContent = parts.join(' · ');
}

function finish(col, keep) {
  const a = col.active;
  if (!a) return;
  a.endedAt = performance.now();
  renderStats(col);
  if (keep) {
    col.messages.push({ role: 'user', content: a.prompt }, { role: 'assistant', content: a.text });
  }
  col.active = null;
  buttons();
}

function byId(id) {
  return COLUMNS.find((c) => c.active && c.active.id === id) || null;
}

function onStart(f) {
  const col = byId(f.id);
  if (!col) return;
  const headers = f.headers && typeof f.headers === 'object' ? f.headers : {};
  const lines = Object.entries(headers)
    .filter(([k]) => /^x-smackctl-/i.test(k) || /^x-request-id$/i.test(k))
    .map(([k, v]) => `${k}: ${v}`);
  part(col, 'headers').textContent = lines.join('\n');
}

function onChunk(f) {
  const col = byId(f.id);
  if (!col) return;
  const a = col.active;
  const data = f.data && typeof f.data === 'object' ? f.data : {};
  if (data.usage) a.usage = data.usage;
  const choice = Array.isArray(data.choices) ? data.choices[0] : null;
  const delta = (choice && (choice.delta || choice.message)) || {};
  const think = typeof delta.reasoning_content === 'string' ? delta.reasoning_content : '';
  const content = typeof delta.content === 'string' ? delta.content
    : (choice && typeof choice.text === 'string' ? choice.text : '');
  if ((think || content) && a.firstAt === null) a.firstAt = performance.now();
  if (think) {
    const r = part(col, 'reasoning');
    r.append(think);
    r.hidden = false;
  }
  if (content) {
    a.text += content;
    part(col, 'answer').append(content);
  }
  if (think || content) a.chunks += 1;
  renderStats(col);
}

function onDone(f) {
  const col = byId(f.id);
  if (col) finish(col, true);
}

function onError(f) {
  if (f.id === undefined || f.id === null) return; // ws.js shows those
  const col = byId(f.id);
  if (!col) return;
  const e = f.error || {};
  setError(col, `${f.status ? `${f.status}: ` : ''}${e.message || 'the request failed'}`);
  finish(col, false);
}

function send() {
  const prompt = $('#pg-prompt').value;
  if (!prompt.trim() || anyActive()) return;
  if (!ws.isOpen()) {
    showError('the live connection is down: the playground waits for it to come back');
    return;
  }
  const cols = $('#pg-compare').checked ? [A, B] : [A];
  const system = $('#pg-system').value.trim();
  const sampling = {};
  const temperature = num('#pg-temperature');
  const topP = num('#pg-top-p');
  const maxTokens = num('#pg-max-tokens', true);
  if (temperature !== undefined) sampling.temperature = temperature;
  if (topP !== undefined) sampling.top_p = topP;
  if (maxTokens !== undefined) sampling.max_tokens = maxTokens;
  for (const col of cols) {
    const model = (col === A ? $('#pg-model') : $('#pg-model-b')).value;
    if (!model) {
      showError('pick a model first');
      return;
    }
  }
  for (const col of cols) {
    const model = (col === A ? $('#pg-model') : $('#pg-model-b')).value;
    const messages = [
      ...(system ? [{ role: 'system', content: system }] : []),
      ...col.messages,
      { role: 'user', content: prompt },
    ];
    const id = `pg-${Date.now().toString(36)}-${++counter}-${col.name}`;
    col.active = {
      id, prompt, text: '', sentAt: performance.now(), firstAt: null, chunks: 0, usage: null,
    };
    part(col, 'title').textContent = model;
    renderHistory(col, prompt);
    fill(part(col, 'answer'));
    const r = part(col, 'reasoning');
    fill(r);
    r.hidden = true;
    part(col, 'headers').textContent = '';
    part(col, 'stats').textContent = 'waiting…';
    setError(col, '');
    ws.send({
      op: 'chat',
      id,
      body: {
        model, messages, ...sampling, stream: true, stream_options: { include_usage: true },
      },
    });
  }
  $('#pg-prompt').value = '';
  buttons();
}

function stop() {
  for (const col of COLUMNS) {
    if (!col.active) continue;
    ws.send({ op: 'cancel', id: col.active.id });
    col.active.stopped = true;
    finish(col, true);
  }
}

function clear() {
  stop();
  for (const col of COLUMNS) {
    col.messages = [];
    for (const cls of ['history', 'answer', 'reasoning']) fill(part(col, cls));
    part(col, 'reasoning').hidden = true;
    part(col, 'headers').textContent = '';
    part(col, 'stats').textContent = '';
    setError(col, '');
  }
}

function compare() {
  const on = $('#pg-compare').checked;
  $('#pg-model-b').hidden = !on;
  $('#pg-out-b').hidden = !on;
  $('#view-playground').classList.toggle('comparing', on);
}

async function loadModels() {
  const answer = await get('/v1/models');
  const ids = (Array.isArray(answer && answer.data) ? answer.data : [])
    .map((m) => m.id).filter((id) => typeof id === 'string');
  for (const [sel, pick] of [['#pg-model', 0], ['#pg-model-b', 1]]) {
    const select = $(sel);
    const chosen = select.value;
    fill(select, ids.map((id) => h('option', { value: id }, id)));
    if (ids.includes(chosen)) select.value = chosen;
    else if (ids.length) select.value = ids[Math.min(pick, ids.length - 1)];
  }
  if (!ids.length) showError('no models to chat with: this key may use none, or none is set up');
  loaded = true;
}

export default {
  init() {
    A.el = $('#pg-out-a');
    B.el = $('#pg-out-b');
    ws.on('start', onStart);
    ws.on('chunk', onChunk);
    ws.on('done', onDone);
    ws.on('error', onError);
    ws.on('_close', () => {
      for (const col of COLUMNS) {
        if (!col.active) continue;
        setError(col, 'the connection was lost before the answer ended');
        finish(col, false);
      }
    });
    $('#pg-send').addEventListener('click', send);
    $('#pg-stop').addEventListener('click', stop);
    $('#pg-clear').addEventListener('click', clear);
    $('#pg-compare').addEventListener('change', compare);
    $('#pg-prompt').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        send();
      }
    });
    compare();
    buttons();
  },
  show: guard(async () => {
    if (!loaded || !$('#pg-model').value) await loadModels();
  }),
  hide() {},
};
