// dom.js: tiny DOM helpers (h() builds elements with textContent only, never innerHTML:
// model names, prompts, answers and errors come from the server and are untrusted), the
// error banner, and the formatting of bytes, durations, times and numbers.

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

/** h('td', {class: 'x', dataset: {id}, onclick: fn}, 'text', node, [more]) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = String(v);
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k.startsWith('on') && typeof v === 'function') {
        el.addEventListener(k.slice(2), v);
      } else if (k === 'value' || k === 'checked' || k === 'disabled' || k === 'selected') {
        el[k] = v;
      } else if (v === true) el.setAttribute(k, '');
      else el.setAttribute(k, String(v));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
  return el;
}

/** Empty an element, then append children. */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export function show(el, visible) {
  if (el) el.hidden = !visible;
}

// ---- the error banner (#error): the last error's message; a click hides it

export function showError(message) {
  const el = $('#error');
  if (!el) return;
  el.textContent = String(message);
  el.hidden = false;
}

export function clearError() {
  const el = $('#error');
  if (!el) return;
  el.textContent = '';
  el.hidden = true;
}

/** The message of anything thrown. */
export function messageOf(err) {
  if (err && typeof err.message === 'string' && err.message) return err.message;
  return String(err);
}

/** Wrap an async handler: an error goes to the banner. */
export function guard(fn) {
  return async (...args) => {
    try {
      return await fn(...args);
    } catch (err) {
      showError(messageOf(err));
      return undefined;
    }
  };
}

// ---- formatting

const MiB = 2 ** 20;
const GiB = 2 ** 30;

export function fmtMiB(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '';
  return `${Math.round(n / MiB)} MiB`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '';
  if (Math.abs(n) >= GiB) return `${(n / GiB).toFixed(n >= 10 * GiB ? 1 : 2)} GiB`;
  return `${Math.round(n / MiB)} MiB`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '';
  return ms >= 10000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}

const pad = (n) => String(n).padStart(2, '0');

/** A unix time: HH:MM:SS today, else YYYY-MM-DD HH:MM (local time). */
export function fmtTime(unix) {
  if (unix === null || unix === undefined || !Number.isFinite(unix)) return '';
  const d = new Date(unix * 1000);
  const now = new Date();
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === now.toDateString()) return hms;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function fmtNum(n, digits = 0) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '';
  return n.toFixed(digits);
}

/** A value of unknown shape as short text (objects as JSON). */
export function text(v) {
  if (v === null || v === undefined) return '';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
