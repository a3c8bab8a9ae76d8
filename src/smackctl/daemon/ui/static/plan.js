// plan.js: what the overview's profile switch and the profile editor share: a switch plan
// (SwitchPlan.as_dict: what loads, unloads, stays, and the memory) as readable DOM, and one
// line of text for each NDJSON progress event of a load or a switch.

import { h, fmtMiB, text } from './dom.js';

const GROUPS = [
  ['Loads', ['load', 'reload']],
  ['Unloads', ['unload']],
  ['Stays loaded', ['keep']],
  ['Loaded on first use', ['add']],
  ['Changed, not loaded', ['update']],
  ['Removed', ['remove']],
];

function step(s) {
  const parts = [s.model];
  if (s.action === 'reload') parts.push('(reload)');
  if (s.ram) parts.push(`— ${fmtMiB(s.ram)}`);
  if (s.reason) parts.push(`— ${s.reason}`);
  return h('li', { class: `step ${s.action}`, dataset: { model: s.model, action: s.action } },
    parts.join(' '));
}

/** A plan as a block of DOM. */
export function renderPlan(plan) {
  if (!plan || typeof plan !== 'object') return h('p', { class: 'muted' }, 'no plan');
  const steps = Array.isArray(plan.steps) ? plan.steps : [];
  const out = h('div', { class: 'plan-view' });
  out.append(h('p', { class: 'plan-head' },
    `${plan.source ?? '?'} → ${plan.target ?? '?'}`));
  const fits = plan.fits === false ? 'does NOT fit' : 'fits';
  out.append(h('p', { class: plan.fits === false ? 'plan-mem bad' : 'plan-mem' },
    `memory: ${fmtMiB(plan.ram_before)} loaded now → ${fmtMiB(plan.ram_after)} after, ` +
    `budget ${fmtMiB(plan.budget_ram)} (${fits})`));
  for (const [title, actions] of GROUPS) {
    let picked = steps.filter((s) => actions.includes(s.action));
    // a kept model that holds no memory is not loaded: it is no news
    if (actions.includes('keep')) picked = picked.filter((s) => s.ram);
    if (!picked.length) continue;
    out.append(h('div', { class: 'plan-group' },
      h('h4', null, `${title} (${picked.length})`),
      h('ul', null, picked.map(step))));
  }
  if (!steps.length) out.append(h('p', { class: 'muted' }, 'no model changes'));
  const problems = Array.isArray(plan.problems) ? plan.problems : [];
  if (problems.length) {
    out.append(h('div', { class: 'plan-group problems' },
      h('h4', null, 'Problems'),
      h('ul', null, problems.map((p) => h('li', { class: 'bad' }, text(p))))));
  }
  return out;
}

const SKIP = new Set(['event', 'id', 'at', 'plan']);

function rest(ev) {
  return Object.entries(ev)
    .filter(([k, v]) => !SKIP.has(k) && v !== null && v !== undefined && v !== '')
    .map(([k, v]) => `${k}=${text(v)}`)
    .join(' ');
}

/** One progress event (NDJSON line) as text. */
export function progressText(ev) {
  if (!ev || typeof ev !== 'object') return text(ev);
  if (ev.event === undefined && typeof ev.ok === 'boolean') return outcomeText(ev);
  const model = ev.model ? `${ev.model}: ` : '';
  switch (ev.event) {
    case 'progress': {
      let t = `${model}${ev.phase ?? 'progress'}`;
      if (ev.total) t += ` ${Math.floor((100 * (ev.done || 0)) / ev.total)}%`;
      else if (ev.done) t += ` ${ev.done}`;
      return t;
    }
    case 'state':
      return `${model}state ${ev.state}`;
    case 'ready':
      return `${model}ready${ev.pid ? ` (pid ${ev.pid})` : ''}` +
        `${ev.seconds !== undefined ? ` in ${ev.seconds} s` : ''}`;
    case 'unloaded':
      return `${model}unloaded`;
    case 'switch':
      return `switch to ${ev.profile ?? '?'}: ${ev.phase ?? ''}`;
    case 'done':
      return `done${ev.profile ? `: profile ${ev.profile} active` : ''}`;
    case 'error':
      return `error: ${model}${ev.message ?? 'failed'}${ev.hint ? ` (fix: ${ev.hint})` : ''}`;
    case 'text':
      return ev.text;
    default:
      return `${ev.event ?? 'event'} ${model}${rest(ev)}`.trim();
  }
}

/** A whole JSON answer instead of a stream (a reload's: {ok, changed, profile, error}). */
function outcomeText(r) {
  if (r.ok) {
    return `done: profile ${r.profile ?? ''} ${r.changed === false ? 'unchanged' : 'active'}`;
  }
  const issues = Array.isArray(r.issues) ? r.issues.map(text).join('; ') : '';
  return `error: ${r.error ?? (issues || 'failed')}`;
}

/** Whether a stream's last line (or a whole answer) says it failed. */
export function failed(last) {
  return Boolean(last && (last.event === 'error' || last.ok === false));
}

/** A <li> for a progress event (class error for an error). */
export function progressLine(ev) {
  const cls = failed(ev) ? 'progress error' : 'progress';
  return h('li', { class: cls }, progressText(ev));
}
