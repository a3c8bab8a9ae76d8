// api.js: the page's HTTP calls. Same origin, the session cookie, and the CSRF token from
// GET /ui/session in an X-CSRF-Token header on every request but GET/HEAD. An error answer
// ({"error": {"message", "type", "code"}}) becomes an ApiError with its message; a 401 (the
// session ended) sends the browser to the login page. NDJSON progress streams (loads,
// switches) are read line by line.

export const session = { name: '', admin: false, scope: '', models: [], csrf: '', expires: 0 };

export class ApiError extends Error {
  constructor(message, status, type = null, code = null, hint = null) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.type = type;
    this.code = code;
    this.hint = hint;
  }
}

const LOGIN = '/ui/login';

function toLogin() {
  window.location.assign(LOGIN);
}

async function toError(res) {
  let message = `${res.status} ${res.statusText || 'error'}`;
  let type = null;
  let code = null;
  let hint = null;
  let body = '';
  try {
    body = await res.text();
  } catch {
    body = '';
  }
  try {
    const parsed = JSON.parse(body);
    const e = parsed && parsed.error;
    if (e && typeof e === 'object') {
      if (e.message) message = String(e.message);
      type = e.type ?? null;
      code = e.code ?? null;
      hint = e.hint ?? null;
    } else if (typeof e === 'string') {
      message = e;
    }
  } catch {
    if (body.trim()) message = `${res.status}: ${body.trim().slice(0, 300)}`;
  }
  return new ApiError(message, res.status, type, code, hint);
}

/** fetch() with the session's cookie and CSRF header; throws ApiError on a non-2xx. */
export async function request(method, path, body, { login = true } = {}) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = session.csrf;
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    throw new ApiError(`cannot reach the supervisor (${err.message || err})`, 0);
  }
  if (res.status === 401 && login) {
    toLogin();
    throw new ApiError('the session has ended: log in again', 401);
  }
  if (!res.ok) throw await toError(res);
  return res;
}

async function json(res) {
  if (res.status === 204) return null;
  const t = await res.text();
  return t ? JSON.parse(t) : null;
}

export const get = async (path) => json(await request('GET', path));
export const getText = async (path) => (await request('GET', path)).text();
export const post = async (path, body = {}) => json(await request('POST', path, body));
export const put = async (path, body = {}) => json(await request('PUT', path, body));
export const del = async (path) => json(await request('DELETE', path));

/** A query string from an object (null/undefined/'' left out). */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

/**
 * Send a request whose answer is NDJSON (one event a line) and call onLine(obj) with each
 * line as it arrives; resolves to the last line (a load's `ready`, a switch's `done`, or an
 * `error` event). A line that is not JSON is given as {event: 'text', text}.
 */
export async function stream(method, path, body, onLine) {
  const res = await request(method, path, body);
  const type = res.headers.get('content-type') || '';
  if (!type.includes('ndjson') && type.includes('json')) {
    const whole = await json(res);
    if (whole !== null) onLine(whole);
    return whole;
  }
  let last = null;
  const handle = (line) => {
    if (!line.trim()) return;
    let obj;
    try {
      obj = JSON.parse(line);
    } catch {
      obj = { event: 'text', text: line };
    }
    last = obj;
    onLine(obj);
  };
  if (!res.body || !res.body.getReader) {
    for (const line of (await res.text()).split('\n')) handle(line);
    return last;
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      handle(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
  }
  buf += decoder.decode();
  handle(buf);
  return last;
}

/** GET /ui/session into `session` (a 401 goes to the login page). */
export async function loadSession() {
  const s = await get('/ui/session');
  Object.assign(session, s || {});
  session.admin = Boolean(session.admin);
  return session;
}

export async function logout() {
  try {
    await request('POST', '/ui/logout', undefined, { login: false });
  } finally {
    toLogin();
  }
}
