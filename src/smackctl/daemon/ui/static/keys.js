// keys.js: the keys view (admin). GET /api/keys as a table (what `smackctl keys list`
// shows, with limits, priority, and what each key used over the last 30 days from
// GET /api/usage?by=key), a revoke button per key (DELETE /api/keys/NAME after a confirm),
// and the create form (POST /api/keys), whose answer's secret is shown once in #key-secret.

import { get, post, del, query } from './api.js';
import { $, h, fill, fmtTime, guard, showError, messageOf } from './dom.js';

const COLUMNS = 10;

function state(k) {
  if (k.revoked !== null && k.revoked !== undefined) return `revoked ${fmtTime(k.revoked)}`;
  if (k.expires !== null && k.expires !== undefined && k.expires <= Date.now() / 1000) {
    return 'expired';
  }
  return 'active';
}

function limits(k) {
  const l = k.limits && typeof k.limits === 'object' ? k.limits : {};
  return Object.entries(l).map(([n, v]) => `${n} ${v}`).join(', ');
}

function usedText(u) {
  if (!u) return '';
  const tokens = u.tokens_in + u.tokens_out;
  return `${u.requests} req, ${tokens} tok${u.errors ? `, ${u.errors} err` : ''}`;
}

async function usedByKey() {
  const since = Math.floor(Date.now() / 1000) - 30 * 86400;
  const out = new Map();
  try {
    const rows = await get(`/api/usage${query({ by: 'key', bucket: 'day', since })}`);
    for (const r of Array.isArray(rows) ? rows : []) {
      const u = out.get(r.key) || { requests: 0, tokens_in: 0, tokens_out: 0, errors: 0 };
      u.requests += r.requests || 0;
      u.tokens_in += r.tokens_in || 0;
      u.tokens_out += r.tokens_out || 0;
      u.errors += r.errors || 0;
      out.set(r.key, u);
    }
  } catch {
    // the table is still worth showing without it
  }
  return out;
}

function row(k, used) {
  const revoked = k.revoked !== null && k.revoked !== undefined;
  return h('tr', { dataset: { key: k.name }, class: revoked ? 'revoked' : null },
    h('td', { class: 'name' }, k.name, h('span', { class: 'muted prefix' }, k.prefix ? ` ${k.prefix}…` : '')),
    h('td', { class: 'scope' }, k.scope ?? ''),
    h('td', { class: 'models' }, Array.isArray(k.models) ? k.models.join(',') : ''),
    h('td', { class: 'limits' }, limits(k)),
    h('td', { class: 'priority' }, k.priority ?? ''),
    h('td', { class: 'created' }, fmtTime(k.created)),
    h('td', { class: 'expires' }, k.expires == null ? 'never' : fmtTime(k.expires)),
    h('td', { class: 'state' }, state(k)),
    h('td', { class: 'used', title: 'the last 30 days' }, usedText(used.get(k.name))),
    h('td', { class: 'actions' }, revoked ? null
      : h('button', { type: 'button', class: 'revoke danger', onclick: () => revoke(k.name) },
        'Revoke')));
}

async function refresh() {
  const [keys, used] = await Promise.all([get('/api/keys'), usedByKey()]);
  const list = Array.isArray(keys) ? keys : [];
  const body = $('#keys tbody');
  if (!list.length) {
    fill(body, h('tr', { class: 'empty' },
      h('td', { colspan: COLUMNS }, 'no keys yet: the operator\'s token is the only one')));
    return;
  }
  fill(body, list.map((k) => row(k, used)));
}

async function revoke(name) {
  // eslint-disable-next-line no-alert
  if (!window.confirm(`Revoke key ${name}? Its next request gets 401 and its streams end.`)) {
    return;
  }
  try {
    await del(`/api/keys/${encodeURIComponent(name)}`);
  } catch (err) {
    showError(`revoke ${name}: ${messageOf(err)}`);
  }
  await guard(refresh)();
}

function field(form, name) {
  return form.elements.namedItem(name);
}

function positive(form, name) {
  const raw = field(form, name).value.trim();
  if (!raw) return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} must be a whole number above 0`);
  return n;
}

async function create(e) {
  e.preventDefault();
  const form = e.target;
  const name = field(form, 'name').value.trim();
  if (!name) {
    showError('a key needs a name');
    return;
  }
  const models = field(form, 'models').value.split(',').map((m) => m.trim()).filter(Boolean);
  const lim = {};
  const rpm = positive(form, 'rpm');
  const tpm = positive(form, 'tpm');
  if (rpm !== undefined) lim.rpm = rpm;
  if (tpm !== undefined) lim.tpm = tpm;
  const body = {
    name,
    scope: field(form, 'scope').value,
    models: models.length ? models : ['*'],
    limits: lim,
  };
  if (field(form, 'priority')) body.priority = field(form, 'priority').value;
  const expires = field(form, 'expires') ? field(form, 'expires').value.trim() : '';
  if (expires) body.expires = expires;
  const submit = form.querySelector('button[type="submit"]');
  submit.disabled = true;
  try {
    const made = await post('/api/keys', body);
    showSecret(made);
    form.reset();
  } finally {
    submit.disabled = false;
  }
  await refresh();
}

function showSecret(made) {
  const box = $('#key-secret');
  const code = h('code', { class: 'secret' }, made.key ?? '');
  const copy = h('button', { type: 'button', class: 'copy' }, 'Copy');
  copy.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(made.key ?? '');
      copy.textContent = 'Copied';
    } catch {
      const range = document.createRange();
      range.selectNodeContents(code);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      copy.textContent = 'Selected: copy it with Ctrl+C';
    }
  });
  fill(box,
    h('p', null, `Key ${made.name} (scope ${made.scope}, models ` +
      `${Array.isArray(made.models) ? made.models.join(',') : ''}) was made. ` +
      'Its secret is shown only once: copy it now. Clients send it as ' +
      '`Authorization: Bearer KEY` (OPENAI_API_KEY).'),
    h('p', { class: 'secret-line' }, code, ' ', copy));
  box.hidden = false;
}

export default {
  init() {
    $('#key-create').addEventListener('submit', guard(create));
  },
  show: guard(refresh),
  hide() {
    // the secret is not left on the page once one looks elsewhere
    const box = $('#key-secret');
    box.replaceChildren();
    box.hidden = true;
  },
};
