// profiles.js: the profile editor (admin). GET /api/profiles fills the textarea with the
// active profile's text; as one types (debounced) POST /api/profiles/check validates it:
// its problems (one li per problem, the line marked in the gutter), the diff with the file,
// and the switch's plan. Apply shows that plan and asks to confirm; confirm writes the file
// and switches to it (PUT /api/profiles/active, NDJSON progress shown under the plan).

import { get, post, stream } from './api.js';
import { $, h, fill, debounce, guard, showError, messageOf } from './dom.js';
import { renderPlan, progressLine, progressText, failed } from './plan.js';

let original = null; // the text as the server has it
let checked = null; // {text, problems, diff, plan} of the last check that came back
let seq = 0;
let busy = false;

function ta() {
  return $('#profile-text');
}

function setStatus(msg, bad = false) {
  const el = $('#profile-status');
  el.textContent = msg;
  el.classList.toggle('bad', bad);
}

// ---- gutter

function renderGutter() {
  const count = ta().value.split('\n').length;
  const gutter = $('#profile-gutter');
  const bad = new Set((checked && checked.text === ta().value ? checked.problems : [])
    .map((p) => Number(p.line)).filter((n) => Number.isFinite(n)));
  const have = gutter.children.length;
  if (have > count) {
    while (gutter.children.length > count) gutter.lastElementChild.remove();
  }
  for (let i = have + 1; i <= count; i++) {
    gutter.append(h('div', { class: 'ln', dataset: { line: String(i) } }, String(i)));
  }
  for (const el of gutter.children) el.classList.toggle('bad', bad.has(Number(el.dataset.line)));
  gutter.scrollTop = ta().scrollTop;
}

function goToLine(n) {
  const el = ta();
  const lines = el.value.split('\n');
  if (!Number.isFinite(n) || n < 1 || n > lines.length) return;
  const start = lines.slice(0, n - 1).reduce((a, l) => a + l.length + 1, 0);
  el.focus();
  el.setSelectionRange(start, start + lines[n - 1].length);
  const lineHeight = parseFloat(getComputedStyle(el).lineHeight) || 18;
  el.scrollTop = Math.max(0, (n - 3) * lineHeight);
}

// ---- the check

function renderDiff(diff) {
  const pre = $('#profile-diff');
  const text = Array.isArray(diff) ? diff.join('\n') : (diff || '');
  const lines = text ? text.replace(/\n$/, '').split('\n') : [];
  fill(pre, lines.map((l) => {
    let cls = null;
    if (l.startsWith('+')) cls = l.startsWith('+++') ? 'add file' : 'add';
    else if (l.startsWith('-')) cls = l.startsWith('---') ? 'del file' : 'del';
    else if (l.startsWith('@@')) cls = 'hunk';
    return h('span', { class: cls }, `${l}\n`);
  }));
  $('#profile-nodiff').hidden = lines.length > 0 || !checked;
}

function renderProblems(problems) {
  fill($('#profile-problems'), problems.map((p) => {
    const line = Number.isFinite(Number(p.line)) && p.line !== null ? String(p.line) : '';
    return h('li', { dataset: { line }, title: line ? `go to line ${line}` : null,
      onclick: () => goToLine(Number(line)) }, String(p.text ?? p.message ?? ''));
  }));
}

function updateApply() {
  const ok = !busy && checked !== null && checked.text === ta().value &&
    checked.problems.length === 0;
  $('#profile-apply').disabled = !ok;
}

async function check() {
  const text = ta().value;
  const mine = ++seq;
  setStatus('checking…');
  let answer;
  try {
    answer = await post('/api/profiles/check', { text });
  } catch (err) {
    if (mine !== seq) return;
    checked = null;
    setStatus(`the check failed: ${messageOf(err)}`, true);
    updateApply();
    return;
  }
  if (mine !== seq || text !== ta().value) return;
  const problems = Array.isArray(answer && answer.problems) ? answer.problems : [];
  checked = { text, problems, diff: answer && answer.diff, plan: answer && answer.plan };
  renderProblems(problems);
  renderDiff(checked.diff);
  renderGutter();
  setStatus(problems.length
    ? `${problems.length} problem${problems.length === 1 ? '' : 's'}`
    : text === original ? 'valid (unchanged)' : 'valid', problems.length > 0);
  updateApply();
}

const checkSoon = debounce(() => check(), 300);

function edited() {
  renderGutter();
  $('#profile-confirm').hidden = true;
  $('#profile-plan').replaceChildren();
  updateApply();
  setStatus('…');
  checkSoon();
}

// ---- load, apply

async function load(force = false) {
  if (!force && original !== null && ta().value !== original) return; // keep an edit
  const p = await get('/api/profiles');
  original = typeof (p && p.text) === 'string' ? p.text : '';
  $('#profile-active').textContent = (p && p.active) || '';
  $('#profile-path').textContent = (p && p.path) || '(no file)';
  ta().value = original;
  checked = null;
  renderGutter();
  const editable = Boolean(p && p.path);
  ta().readOnly = !editable;
  $('#profile-revert').disabled = !editable;
  if (!editable) {
    setStatus('the active profile is the built-in one: there is no file to edit');
    updateApply();
    return;
  }
  await check();
}

function apply() {
  if (!checked || checked.text !== ta().value || checked.problems.length) return;
  const box = $('#profile-plan');
  fill(box, h('h3', null, 'The switch this makes'), renderPlan(checked.plan));
  $('#profile-confirm').hidden = false;
}

async function confirmApply() {
  const text = ta().value;
  $('#profile-confirm').hidden = true;
  busy = true;
  updateApply();
  ta().readOnly = true;
  const box = $('#profile-plan');
  const lines = h('ul', { class: 'progress-lines' });
  box.append(h('h3', null, 'Progress'), lines);
  try {
    const last = await stream('PUT', '/api/profiles/active', { text }, (ev) => {
      lines.append(progressLine(ev));
    });
    if (failed(last)) {
      showError(progressText(last));
    } else {
      original = null; // the file now holds the text
    }
  } catch (err) {
    lines.append(h('li', { class: 'progress error' }, messageOf(err)));
    throw err;
  } finally {
    busy = false;
    ta().readOnly = !$('#profile-path').textContent || $('#profile-path').textContent === '(no file)';
    if (original === null) await load(true);
    updateApply();
  }
}

function tabKey(e) {
  if (e.key === 'Tab' && !e.shiftKey && !e.ctrlKey && !e.altKey && !e.metaKey) {
    e.preventDefault();
    ta().setRangeText('  ', ta().selectionStart, ta().selectionEnd, 'end');
    edited();
  }
}

export default {
  init() {
    ta().addEventListener('input', edited);
    ta().addEventListener('keydown', tabKey);
    ta().addEventListener('scroll', () => { $('#profile-gutter').scrollTop = ta().scrollTop; });
    $('#profile-apply').addEventListener('click', apply);
    $('#profile-confirm').addEventListener('click', guard(confirmApply));
    $('#profile-revert').addEventListener('click', guard(async () => {
      if (original !== null) {
        ta().value = original;
        edited();
      }
    }));
  },
  show: guard(() => load()),
  hide() {},
};
