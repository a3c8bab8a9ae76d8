// main.js: the page's entry. Reads the session (GET /ui/session: who, admin or not, the CSRF
// token), fills the header (#whoami, #logout), hides what only an admin may do, opens the
// WebSocket, and routes by location.hash (#/overview, #/activity, …) to one view at a time:
// each view module has init() (once) and show()/hide() (as it is opened and left).

import { loadSession, logout, session } from './api.js';
import { $, $$, clearError, guard } from './dom.js';
import * as ws from './ws.js';
import overview from './overview.js';
import activity from './activity.js';
import usage from './usage.js';
import events from './events.js';
import profiles from './profiles.js';
import keys from './keys.js';
import playground from './playground.js';

const VIEWS = { overview, activity, usage, events, profiles, keys, playground };
const ADMIN_ONLY = new Set(['profiles', 'keys']);
const DEFAULT = 'overview';
let current = null;

function allowed(name) {
  return Object.hasOwn(VIEWS, name) && (session.admin || !ADMIN_ONLY.has(name));
}

function wanted() {
  const m = /^#\/?([a-z]+)/.exec(window.location.hash || '');
  return m ? m[1] : DEFAULT;
}

async function route() {
  let name = wanted();
  if (!allowed(name)) {
    name = DEFAULT;
    if (window.location.hash !== `#/${name}`) {
      window.history.replaceState(null, '', `#/${name}`);
    }
  }
  if (name === current) return;
  const previous = current;
  current = name;
  clearError();
  if (previous) {
    try {
      VIEWS[previous].hide();
    } catch (err) {
      console.error(err);
    }
  }
  for (const view of Object.keys(VIEWS)) {
    const section = $(`#view-${view}`);
    if (section) section.hidden = view !== name;
  }
  for (const a of $$('nav a[data-view]')) {
    const on = a.dataset.view === name;
    a.classList.toggle('active', on);
    if (on) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `smackctl · ${name}`;
  await guard(() => VIEWS[name].show())();
}

function applyRole() {
  document.body.classList.toggle('admin', session.admin);
  document.body.classList.toggle('viewer', !session.admin);
  for (const el of $$('.admin-only')) el.hidden = !session.admin;
  $('#whoami').textContent = session.name || '';
  $('#whoami').title = `scope ${session.scope || '?'}` +
    (Array.isArray(session.models) && session.models.length
      ? `, models ${session.models.join(',')}` : '');
}

async function start() {
  $('#error').addEventListener('click', clearError);
  try {
    await loadSession();
  } catch (err) {
    // a 401 is already on its way to the login page
    if (err && err.status !== 401) {
      const el = $('#error');
      el.textContent = `cannot read the session: ${err.message || err}`;
      el.hidden = false;
    }
    return;
  }
  applyRole();
  const metrics = session.admin || session.scope === 'metrics';
  ws.configure({ events: metrics, logs: session.admin });
  $('#events-note').hidden = metrics;
  $('#logout').addEventListener('click', guard(logout));
  for (const view of Object.values(VIEWS)) {
    try {
      view.init();
    } catch (err) {
      console.error(err);
    }
  }
  ws.connect();
  window.addEventListener('hashchange', () => route());
  document.body.classList.remove('loading');
  await route();
}

start();
