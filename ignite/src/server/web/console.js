// Ignite console: fills the page's sections from /api/v1 with the admin token the sysadmin
// pasted (kept in this tab's sessionStorage, sent as `Authorization: Bearer`), and follows
// /api/v1/events for live install and job progress. Everything fetched is written as text
// (textContent), never as HTML: names and log lines come from clients on a hostile network.
'use strict';

const TOKEN_KEY = 'ignite-admin-token';
const VIEWS = ['clients', 'guests', 'archives', 'schedules', 'jobs', 'bootlog'];
let token = sessionStorage.getItem(TOKEN_KEY);
let current = null;
let events = null; // the AbortController of the event stream
let poller = null; // the timer refreshing the current view (guest states, console)
let consoleOf = null; // the guest whose console is shown

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// An element with properties (`class`, `data-*` and others) and children (text or nodes).
function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c ?? ''));
  return e;
}

function say(text, kind) {
  const s = $('status');
  s.textContent = text;
  s.className = kind || '';
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// One call of the API; its JSON answer, or an ApiError with the API's message.
async function api(method, path, body) {
  const headers = { Authorization: 'Bearer ' + token };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let v = null;
  try {
    v = text ? JSON.parse(text) : null;
  } catch (_) {
    v = null;
  }
  if (!r.ok) {
    const msg = v && v.error ? v.error.message : `${r.status} ${text}`;
    if (r.status === 401) logout('The server refused the token: ' + msg);
    throw new ApiError(r.status, msg);
  }
  return v;
}

// Runs `f`, showing its error in the status line.
async function guarded(f) {
  try {
    return await f();
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) say(e.message, 'error');
    return undefined;
  }
}

// ---- formatting ----

function bytes(n) {
  if (n === null || n === undefined) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return (i ? n.toFixed(1) : String(n)) + ' ' + units[i];
}

function when(secs) {
  if (!secs) return '';
  return new Date(secs * 1000).toISOString().replace('T', ' ').slice(0, 19);
}

function every(secs) {
  for (const [u, s] of [['d', 86400], ['h', 3600], ['m', 60]]) {
    if (secs >= s && secs % s === 0) return secs / s + u;
  }
  return secs + 's';
}

// ---- clients and installs ----

// How far an install is, 0 to 1, from its phase (most of the time goes to extracting).
const PHASE_AT = {
  booted: 0.05,
  partitioned: 0.1,
  formatted: 0.15,
  extracted: 0.9,
  configured: 0.95,
  'boot-loader': 0.97,
  done: 1,
};

function progressOf(i) {
  if (i.status === 'done') return 1;
  if (i.phase === 'extracting') return 0.15 + 0.75 * (i.total ? Math.min(i.done / i.total, 1) : 0);
  return PHASE_AT[i.phase] || 0;
}

// An install as the client list has it, in the shape install events have.
function installOf(inst) {
  if (!inst) return null;
  const p = inst.phase || {};
  const name = p.phase === 'boot_loader' ? 'boot-loader' : p.phase || null;
  return { status: inst.status, phase: name, done: p.done, total: p.total, error: p.error };
}

function installText(i) {
  if (!i || i.status === 'replaced') return '';
  if (i.status === 'failed') return 'failed' + (i.error ? ': ' + i.error : '');
  if (i.status === 'done') return 'done';
  if (!i.phase) return 'scheduled';
  if (i.phase === 'extracting' && i.total) {
    return `extracting ${Math.floor((i.done * 100) / i.total)}% of ${bytes(i.total)}`;
  }
  return i.phase;
}

function actionText(c) {
  return c.action + (c.arg ? ' ' + c.arg : '');
}

function clientRow(mac) {
  return document.querySelector(`#clients-rows tr[data-mac="${CSS.escape(mac)}"]`);
}

function newClientRow(c) {
  const kind = el(
    'select',
    { class: 'kind' },
    ...['local', 'install', 'recover', 'capture'].map((a) => el('option', { value: a }, a)),
  );
  const arg = el('input', { class: 'arg', placeholder: 'profile / snapshot' });
  const form = el('form', { class: 'action' }, kind, arg, el('button', { type: 'submit' }, 'Set'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    setAction(c.mac, (kind.value + ' ' + arg.value).trim());
  });
  return el(
    'tr',
    { 'data-mac': c.mac },
    el('td', { class: 'name' }),
    el('td', { class: 'mono' }, c.mac),
    el('td', { class: 'boot-action mono' }),
    el('td', { class: 'last-step' }),
    el('td', { class: 'install' }),
    el('td', {}, el('progress', { max: 1, value: 0 })),
    el('td', {}, form),
  );
}

function showInstall(tr, i) {
  // A list read just before an event can answer after it: keep the newer progress.
  const was = tr.install;
  const older =
    i && was && i.phase === 'extracting' && was.phase === 'extracting' &&
    i.status === was.status && i.total === was.total && i.done < was.done;
  if (older) return;
  tr.install = i;
  const cell = tr.querySelector('.install');
  cell.textContent = installText(i);
  cell.className = 'install' + (i ? ' st-' + i.status : '');
  const bar = tr.querySelector('progress');
  bar.value = i && i.status !== 'replaced' ? progressOf(i) : 0;
  bar.title = cell.textContent;
}

// Updates the rows in place (a form being filled in keeps its text).
function showClients(list) {
  const rows = $('clients-rows');
  const seen = new Set();
  for (const c of list) {
    seen.add(c.mac);
    let tr = clientRow(c.mac);
    if (!tr) {
      tr = newClientRow(c);
      rows.append(tr);
    }
    tr.querySelector('.name').textContent = c.name;
    tr.querySelector('.boot-action').textContent = actionText(c);
    // The step's name and the start of its detail; all of it on hover.
    const step = tr.querySelector('.last-step');
    const full = c.last_step ? `${when(c.last_seen)} ${c.last_step}` : '';
    step.textContent = full.length > 72 ? full.slice(0, 71) + '…' : full;
    step.title = full;
    showInstall(tr, installOf(c.install));
  }
  for (const tr of [...rows.children]) if (!seen.has(tr.dataset.mac)) tr.remove();
  $('clients-empty').hidden = list.length > 0;
}

async function loadClients() {
  showClients(await api('GET', '/api/v1/clients'));
}

async function setAction(mac, action) {
  await guarded(async () => {
    const c = await api('PUT', `/api/v1/clients/${enc(mac)}/action`, { action });
    say(`${c.name}: next boot ${actionText(c)}`, 'ok');
    await loadClients();
  });
}

// ---- guests ----

async function loadGuests() {
  const list = await api('GET', '/api/v1/guests');
  const rows = $('guests-rows');
  rows.replaceChildren(
    ...list.map((g) => {
      const start = el('button', { type: 'button', disabled: g.state === 'running' }, 'Start');
      const stop = el('button', { type: 'button', disabled: g.state !== 'running' }, 'Stop');
      const con = el('button', { type: 'button' }, 'Console');
      start.addEventListener('click', () => guestDo(g.name, 'start', start));
      stop.addEventListener('click', () => guestDo(g.name, 'stop?force=true', stop));
      con.addEventListener('click', () => showConsole(g.name));
      return el(
        'tr',
        { 'data-guest': g.name },
        el('td', {}, g.name),
        el('td', { class: 'state st-' + g.state }, g.state),
        el('td', {}, g.running ? g.running.engine : g.engine),
        el('td', {}, bytes(g.mem)),
        el('td', {}, g.cpus),
        el('td', {}, g.boot.from),
        el('td', { class: 'mono' }, g.nics.map((n) => n.mac).join(' ')),
        el('td', {}, start, ' ', stop, ' ', con),
      );
    }),
  );
  $('guests-empty').hidden = list.length > 0;
  if (consoleOf) await loadConsole();
}

async function guestDo(name, what, button) {
  button.disabled = true;
  await guarded(async () => {
    say(`guest ${name}: ${what.split('?')[0]}…`);
    if (what === 'start') await api('POST', `/api/v1/guests/${enc(name)}/start`);
    else await api('POST', `/api/v1/guests/${enc(name)}/stop?force=true`);
    say(`guest ${name}: ${what === 'start' ? 'started' : 'stopped'}`, 'ok');
  });
  await guarded(loadGuests);
}

function showConsole(name) {
  consoleOf = name;
  guarded(loadConsole);
}

// Terminal escapes and control characters (but newlines and tabs) out of a console's text.
function printable(s) {
  return s.replace(/\x1b\[[0-?]*[ -/]*[@-~]|\x1b[^[]/g, '').replace(/[\x00-\x08\x0b-\x1f\x7f]/g, '');
}

async function loadConsole() {
  const c = await api('GET', `/api/v1/guests/${enc(consoleOf)}/console?bytes=16384`);
  $('console-title').textContent = `Console of ${consoleOf} (the last ${bytes(c.text.length)} of ${bytes(c.size)})`;
  $('console-title').hidden = false;
  const pre = $('console');
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.textContent = printable(c.text);
  pre.hidden = false;
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}

// ---- archives ----

async function loadArchives() {
  const stats = await api('GET', '/api/v1/archives/stats');
  const dl = $('stats');
  const item = (k, v) => el('div', {}, el('dt', {}, k), el('dd', {}, v));
  dl.replaceChildren(
    item('snapshots', stats.snapshots),
    item('restored size', bytes(stats.logical_bytes)),
    item('unique', bytes(stats.unique_bytes)),
    item('stored', bytes(stats.stored_bytes)),
    item('dedup', stats.dedup_ratio.toFixed(2) + '×'),
    item('compression', stats.compression_ratio.toFixed(2) + '×'),
    item('in all', stats.total_ratio.toFixed(2) + '×'),
  );
  const list = await api('GET', '/api/v1/archives');
  // History per name (a client's captures carry its name), newest first.
  list.sort((a, b) => a.name.localeCompare(b.name) || b.time - a.time || b.time_nsec - a.time_nsec);
  $('archives-rows').replaceChildren(
    ...list.map((m) => {
      const labels = Object.entries(m.labels || {}).map(([k, v]) => `${k}=${v}`).join(' ');
      return el(
        'tr',
        { 'data-snapshot': m.id },
        el('td', {}, m.name),
        el('td', { class: 'mono' }, m.id.slice(0, 12)),
        el('td', {}, m.kind),
        el('td', {}, when(m.time)),
        el('td', {}, bytes(m.stats.logical_bytes)),
        el('td', {}, bytes(m.stats.new_stored_bytes)),
        el('td', { class: 'mono' }, labels),
        el('td', {}, el('input', { type: 'radio', name: 'from', value: m.id })),
        el('td', {}, el('input', { type: 'radio', name: 'to', value: m.id })),
      );
    }),
  );
  $('archives-empty').hidden = list.length > 0;
}

function checked(name) {
  const r = document.querySelector(`input[name="${name}"]:checked`);
  return r ? r.value : null;
}

async function diff() {
  const [from, to] = [checked('from'), checked('to')];
  if (!from || !to) {
    say('Pick a From and a To snapshot to compare', 'error');
    return;
  }
  await guarded(async () => {
    const d = await api('GET', `/api/v1/archives/diff?from=${enc(from)}&to=${enc(to)}`);
    let lines;
    if (d.kind === 'image') {
      lines = [`${d.changed_blocks} of ${d.blocks} blocks changed (${bytes(d.changed_bytes)})`];
    } else {
      const sign = { added: '+', removed: '-', changed: '~' };
      const n = (k) => d.changes.filter((c) => c.change === k).length;
      lines = [`${n('added')} added, ${n('removed')} removed, ${n('changed')} changed`].concat(
        d.changes.map((c) => `${sign[c.change]} ${c.path}${c.what ? ' (' + c.what.join(', ') + ')' : ''}`),
      );
    }
    const out = $('diff-out');
    out.textContent = `${from.slice(0, 12)} → ${to.slice(0, 12)}\n` + lines.join('\n');
    out.hidden = false;
    say('compared', 'ok');
  });
}

async function verify() {
  const sample = $('verify-sample').value.trim();
  await guarded(async () => {
    const q = sample ? '?sample=' + enc(sample) : '';
    const j = await api('POST', '/api/v1/archives/verify' + q);
    say(`verifying the store: job ${j.job} (see Jobs)`, 'ok');
  });
}

// ---- schedules, jobs, boot log ----

async function loadSchedules() {
  const list = await api('GET', '/api/v1/schedules');
  $('schedules-rows').replaceChildren(
    ...list.map((s) => {
      const at = `${String(Math.floor(s.at_minute / 60)).padStart(2, '0')}:${String(s.at_minute % 60).padStart(2, '0')}`;
      const bad = /^failed|does not boot/.test(s.last_result || '');
      return el(
        'tr',
        { 'data-schedule': s.name },
        el('td', {}, s.name),
        el('td', {}, at),
        el('td', {}, every(s.every_secs)),
        el('td', {}, when(s.next_run)),
        el('td', {}, when(s.last_run)),
        el('td', { class: bad ? 'st-failed' : '' }, s.last_result || ''),
      );
    }),
  );
  $('schedules-empty').hidden = list.length > 0;
}

function jobResult(j) {
  if (j.error) return j.error;
  if (j.result === null || j.result === undefined) return '';
  return JSON.stringify(j.result).slice(0, 200);
}

async function loadJobs() {
  const list = await api('GET', '/api/v1/jobs');
  list.sort((a, b) => b.id - a.id);
  $('jobs-rows').replaceChildren(
    ...list.map((j) =>
      el(
        'tr',
        { 'data-job': j.id },
        el('td', {}, j.id),
        el('td', {}, j.kind),
        el('td', { class: 'state st-' + j.state }, j.state),
        el('td', {}, el('progress', { max: 1, value: j.total ? j.done / j.total : j.state === 'done' ? 1 : 0 })),
        el('td', {}, when(Math.floor(j.started_ms / 1000))),
        el('td', { class: 'mono' }, jobResult(j)),
      ),
    ),
  );
  $('jobs-empty').hidden = list.length > 0;
}

async function loadBootlog() {
  const mac = $('bootlog-mac').value.trim();
  const text = $('bootlog-text').value.trim().toLowerCase();
  const limit = $('bootlog-limit').value.trim() || '200';
  const q = `?limit=${enc(limit)}` + (mac ? `&mac=${enc(mac)}` : '');
  const steps = (await api('GET', '/api/v1/bootlog' + q))
    .filter((s) => !text || `${s.mac} ${s.ip} ${s.step} ${s.detail}`.toLowerCase().includes(text))
    .reverse();
  $('bootlog-rows').replaceChildren(
    ...steps.map((s) =>
      el(
        'tr',
        {},
        el('td', {}, when(s.time)),
        el('td', { class: 'mono' }, s.mac || ''),
        el('td', { class: 'mono' }, s.ip || ''),
        el('td', {}, s.step),
        el('td', { class: 'mono' }, s.detail),
      ),
    ),
  );
  $('bootlog-empty').hidden = steps.length > 0;
}

// ---- live events ----

const reloads = {};
// Reloads `view` once after a burst of events (if it is shown).
function reloadSoon(view, load) {
  if (reloads[view]) return;
  reloads[view] = setTimeout(() => {
    delete reloads[view];
    if (current === view) guarded(load);
  }, 300);
}

function onEvent(e) {
  if (e.type === 'install') {
    const tr = clientRow(e.mac);
    const before = tr && tr.dataset.phase;
    if (tr) {
      showInstall(tr, e);
      tr.dataset.phase = e.status + ' ' + e.phase;
    }
    // A new phase may come with a new boot step or action: read the row again.
    if (!tr || before !== tr.dataset.phase) reloadSoon('clients', loadClients);
  } else if (e.type === 'client') {
    reloadSoon('clients', loadClients);
  } else if (e.type === 'job') {
    reloadSoon('jobs', loadJobs);
    if (e.state === 'done' || e.state === 'failed') say(`job ${e.id} (${e.kind}): ${e.state}`, e.state === 'done' ? 'ok' : 'error');
  } else if (e.type === 'lagged') {
    reloadSoon(current, VIEW_LOADERS[current]);
  }
}

// Reads the event stream (fetch, so the token goes in a header, not in the URL as an
// EventSource would need), reconnecting until logged out.
async function follow(abort) {
  const live = $('server');
  while (!abort.signal.aborted) {
    try {
      const r = await fetch('/api/v1/events', {
        headers: { Authorization: 'Bearer ' + token },
        signal: abort.signal,
      });
      if (r.status === 401) {
        logout('The server refused the token');
        return;
      }
      live.dataset.live = 'yes';
      live.textContent = 'live';
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const data = buf
            .slice(0, end)
            .split('\n')
            .filter((l) => l.startsWith('data:'))
            .map((l) => l.slice(5).trimStart())
            .join('\n');
          buf = buf.slice(end + 2);
          if (data) onEvent(JSON.parse(data));
        }
      }
    } catch (_) {
      // Aborted, or the server went away: try again below unless logged out.
    }
    live.dataset.live = 'no';
    live.textContent = 'reconnecting…';
    await sleep(2000);
  }
}

// ---- navigation and login ----

const VIEW_LOADERS = {
  clients: loadClients,
  guests: loadGuests,
  archives: loadArchives,
  schedules: loadSchedules,
  jobs: loadJobs,
  bootlog: loadBootlog,
};

function show() {
  const want = location.hash.slice(1);
  current = VIEWS.includes(want) ? want : 'clients';
  for (const v of VIEWS) $(v).hidden = v !== current;
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('current', a.getAttribute('href') === '#' + current);
  }
  clearInterval(poller);
  if (current !== 'guests') consoleOf = null;
  // Guest states and consoles are not events: read them again while shown.
  if (current === 'guests') poller = setInterval(() => guarded(loadGuests), 3000);
  return guarded(VIEW_LOADERS[current]);
}

async function login(t) {
  token = t;
  const h = await guarded(() => api('GET', '/api/v1/health'));
  if (!h) return;
  sessionStorage.setItem(TOKEN_KEY, t);
  $('login').hidden = true;
  $('nav').hidden = false;
  $('logout').hidden = false;
  document.title = `Ignite ${h.version} console`;
  say(`Ignite ${h.version}, up ${every(h.uptime_secs)}`, 'ok');
  events = new AbortController();
  follow(events);
  await show();
}

function logout(why) {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  if (events) events.abort();
  clearInterval(poller);
  for (const v of VIEWS) $(v).hidden = true;
  $('nav').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  $('server').textContent = '';
  say(why || 'Logged out', why ? 'error' : '');
}

$('login-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  login($('token').value.trim());
  $('token').value = '';
});
$('logout').addEventListener('click', () => logout());
$('verify').addEventListener('click', verify);
$('diff').addEventListener('click', diff);
$('bootlog-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  guarded(loadBootlog);
});
window.addEventListener('hashchange', () => token && show());
if (token) login(token);
