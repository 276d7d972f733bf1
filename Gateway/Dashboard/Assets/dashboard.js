// The RBS dashboard page (docs/dashboard.md). No third-party code: a minimal SignalR client (JSON protocol over a
// WebSocket), an ANSI screen that renders bazel's colours and its redrawn progress lines, and the page itself.
'use strict';

// ---------------------------------------------------------------------------------------------------------------
// ANSI: a small terminal. Printable text goes to the cell under the cursor; \r, \n, \b and the CSI sequences bazel
// uses for its progress (cursor up/down/left/right, erase in line/display) move or clear; SGR (colour, bold, ...)
// sets the style of what follows. Only the last MAX_LINES lines are kept.
// ---------------------------------------------------------------------------------------------------------------
const MAX_LINES = 2000;

class AnsiScreen {
  constructor() {
    this.lines = [[]];   // each line: an array of [char, style]
    this.row = 0;
    this.col = 0;
    this.style = AnsiScreen.plain();
    this.pending = '';   // an escape sequence split across chunks
    this.dropped = 0;    // lines scrolled out of the kept window
  }

  static plain() { return { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false }; }

  write(text) {
    let s = this.pending + text;
    this.pending = '';
    let i = 0;
    while (i < s.length) {
      const ch = s[i];
      if (ch === '\x1b') {
        const end = this.escape(s, i);
        if (end < 0) { this.pending = s.slice(i); return; }
        i = end;
        continue;
      }
      if (ch === '\n') { this.newline(); } else if (ch === '\r') { this.col = 0; } else if (ch === '\b') { this.col = Math.max(0, this.col - 1); } else if (ch === '\t') {
        const next = (Math.floor(this.col / 8) + 1) * 8;
        while (this.col < next) { this.put(' '); }
      } else if (ch >= ' ' || ch > '\x7f') { this.put(ch); }
      i++;
    }
  }

  put(ch) {
    const line = this.lines[this.row];
    while (line.length < this.col) { line.push([' ', null]); }
    line[this.col] = [ch, this.style];
    this.col++;
  }

  newline() {
    this.row++;
    this.col = 0;
    if (this.row >= this.lines.length) { this.lines.push([]); }
    if (this.lines.length > MAX_LINES) {
      const excess = this.lines.length - MAX_LINES;
      this.lines.splice(0, excess);
      this.row -= excess;
      this.dropped += excess;
    }
  }

  // Returns the index after the sequence, or -1 when it is incomplete.
  escape(s, start) {
    if (start + 1 >= s.length) { return -1; }
    const kind = s[start + 1];
    if (kind === '[') {
      let j = start + 2;
      while (j < s.length && !(s.charCodeAt(j) >= 0x40 && s.charCodeAt(j) <= 0x7e)) { j++; }
      if (j >= s.length) { return s.length - start > 64 ? start + 2 : -1; }
      this.csi(s.slice(start + 2, j), s[j]);
      return j + 1;
    }
    if (kind === ']') {
      // OSC (e.g. a window title): up to BEL or ST, ignored.
      for (let j = start + 2; j < s.length; j++) {
        if (s[j] === '\x07') { return j + 1; }
        if (s[j] === '\x1b' && s[j + 1] === '\\') { return j + 2; }
      }
      return -1;
    }
    return start + 2;
  }

  csi(params, final) {
    const numbers = params.replace(/^[?>]/, '').split(';').map(p => (p === '' ? NaN : parseInt(p, 10)));
    const n = Number.isNaN(numbers[0]) ? 1 : Math.max(1, numbers[0]);
    switch (final) {
      case 'm': this.sgr(numbers); break;
      case 'A': this.row = Math.max(0, this.row - n); break;
      case 'B': this.row += n; while (this.row >= this.lines.length) { this.lines.push([]); } break;
      case 'C': this.col += n; break;
      case 'D': this.col = Math.max(0, this.col - n); break;
      case 'G': this.col = n - 1; break;
      case 'K': {
        const mode = Number.isNaN(numbers[0]) ? 0 : numbers[0];
        const line = this.lines[this.row];
        if (mode === 0) { line.length = Math.min(line.length, this.col); } else if (mode === 2) { line.length = 0; } else {
          for (let k = 0; k < Math.min(this.col + 1, line.length); k++) { line[k] = [' ', null]; }
        }
        break;
      }
      case 'J': {
        const mode = Number.isNaN(numbers[0]) ? 0 : numbers[0];
        if (mode === 0) { this.lines[this.row].length = Math.min(this.lines[this.row].length, this.col); this.lines.length = this.row + 1; } else if (mode >= 2) {
          this.lines = [[]]; this.row = 0; this.col = 0;
        }
        break;
      }
      default: break; // anything else (scroll regions, modes) does not change what is shown
    }
  }

  sgr(codes) {
    if (codes.length === 0 || (codes.length === 1 && Number.isNaN(codes[0]))) { codes = [0]; }
    const s = { ...this.style };
    for (let k = 0; k < codes.length; k++) {
      const c = Number.isNaN(codes[k]) ? 0 : codes[k];
      if (c === 0) { Object.assign(s, AnsiScreen.plain()); } else if (c === 1) { s.bold = true; } else if (c === 2) { s.dim = true; } else if (c === 3) { s.italic = true; } else if (c === 4) { s.underline = true; } else if (c === 22) { s.bold = false; s.dim = false; } else if (c === 23) { s.italic = false; } else if (c === 24) { s.underline = false; } else if (c >= 30 && c <= 37) { s.fg = c - 30; } else if (c >= 90 && c <= 97) { s.fg = c - 90 + 8; } else if (c === 39) { s.fg = null; } else if (c >= 40 && c <= 47) { s.bg = c - 40; } else if (c >= 100 && c <= 107) { s.bg = c - 100; } else if (c === 49) { s.bg = null; } else if ((c === 38 || c === 48) && codes[k + 1] === 5) {
        const v = codes[k + 2];
        if (c === 38) { s.fg = v; } else { s.bg = v; }
        k += 2;
      } else if ((c === 38 || c === 48) && codes[k + 1] === 2) {
        const rgb = `rgb(${codes[k + 2] | 0},${codes[k + 3] | 0},${codes[k + 4] | 0})`;
        if (c === 38) { s.fg = rgb; } else { s.bg = rgb; }
        k += 4;
      }
    }
    this.style = s;
  }

  // The screen as DOM nodes (text nodes only: nothing the tool prints is ever parsed as HTML).
  render(target) {
    const fragment = document.createDocumentFragment();
    if (this.dropped > 0) {
      const gap = document.createElement('span');
      gap.className = 'gap';
      gap.textContent = `… ${this.dropped} earlier lines not shown\n`;
      fragment.appendChild(gap);
    }
    this.lines.forEach((line, index) => {
      let run = '';
      let runStyle;
      const flush = () => {
        if (run !== '') { fragment.appendChild(AnsiScreen.span(run, runStyle)); }
        run = '';
      };
      for (const [ch, style] of line) {
        if (style !== runStyle) { flush(); runStyle = style; }
        run += ch;
      }
      flush();
      if (index < this.lines.length - 1) { fragment.appendChild(document.createTextNode('\n')); }
    });
    target.replaceChildren(fragment);
  }

  static span(text, style) {
    if (!style || (style.fg === null && style.bg === null && !style.bold && !style.dim && !style.italic && !style.underline)) {
      return document.createTextNode(text);
    }
    const span = document.createElement('span');
    const classes = [];
    AnsiScreen.colour(span, classes, 'fg', style.fg);
    AnsiScreen.colour(span, classes, 'bg', style.bg);
    if (style.bold) { classes.push('ansi-bold'); }
    if (style.dim) { classes.push('ansi-dim'); }
    if (style.italic) { classes.push('ansi-italic'); }
    if (style.underline) { classes.push('ansi-underline'); }
    span.className = classes.join(' ');
    span.textContent = text;
    return span;
  }

  static colour(span, classes, which, value) {
    if (value === null || value === undefined) { return; }
    if (typeof value === 'number' && value < 16) { classes.push(`ansi-${which}-${which === 'bg' ? value % 8 : value}`); return; }
    const css = typeof value === 'string' ? value : AnsiScreen.xterm256(value);
    if (which === 'fg') { span.style.color = css; } else { span.style.backgroundColor = css; }
  }

  static xterm256(n) {
    if (n >= 232) { const g = 8 + (n - 232) * 10; return `rgb(${g},${g},${g})`; }
    const k = n - 16;
    const level = v => (v === 0 ? 0 : 55 + v * 40);
    return `rgb(${level(Math.floor(k / 36))},${level(Math.floor(k / 6) % 6)},${level(k % 6)})`;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// SignalR: negotiate, then the JSON hub protocol over a WebSocket (records end with 0x1e). The page calls one
// streaming hub method, Watch, and receives its items; it answers pings and sends its own.
// ---------------------------------------------------------------------------------------------------------------
const RECORD_SEPARATOR = '\x1e';

class HubStream {
  constructor(path, onItem, onState) {
    this.path = path; this.onItem = onItem; this.onState = onState;
    this.buffer = ''; this.handshaken = false; this.closed = false; this.pinger = null;
  }

  async start() {
    // The session is the HttpOnly cookie sign-in set: the browser sends it on both requests, this script never sees it.
    const negotiate = await fetch(`${this.path}/negotiate?negotiateVersion=1`, { method: 'POST' });
    if (negotiate.status === 401) { throw Object.assign(new Error(await negotiate.text()), { unauthorized: true }); }
    if (!negotiate.ok) { throw new Error(`negotiate: HTTP ${negotiate.status} ${await negotiate.text()}`); }
    const { connectionToken } = await negotiate.json();
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const socket = new WebSocket(`${scheme}://${location.host}${this.path}?id=${encodeURIComponent(connectionToken)}`);
    this.socket = socket;
    socket.onopen = () => socket.send(JSON.stringify({ protocol: 'json', version: 1 }) + RECORD_SEPARATOR);
    socket.onmessage = event => this.receive(event.data);
    socket.onclose = event => { this.stopPinging(); if (!this.closed) { this.onState('closed', `connection closed (${event.code})`); } };
    socket.onerror = () => this.onState('error', 'connection failed');
  }

  receive(data) {
    this.buffer += data;
    let end;
    while ((end = this.buffer.indexOf(RECORD_SEPARATOR)) >= 0) {
      const record = JSON.parse(this.buffer.slice(0, end));
      this.buffer = this.buffer.slice(end + 1);
      if (!this.handshaken) {
        if (record.error) { this.onState('error', record.error); this.close(); return; }
        this.handshaken = true;
        this.send({ type: 4, invocationId: '1', target: 'Watch', arguments: [] });
        this.pinger = setInterval(() => this.send({ type: 6 }), 15000);
        this.onState('live', 'live');
        continue;
      }
      switch (record.type) {
        case 2: this.onItem(record.item); break;
        case 3: this.onState('closed', record.error || 'the gateway ended the feed'); this.close(); break;
        case 6: break;
        case 7: this.onState('closed', record.error || 'the gateway closed the connection'); this.close(); break;
        default: break;
      }
    }
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) { this.socket.send(JSON.stringify(message) + RECORD_SEPARATOR); }
  }

  stopPinging() { if (this.pinger) { clearInterval(this.pinger); this.pinger = null; } }

  close() { this.closed = true; this.stopPinging(); if (this.socket) { this.socket.close(); } }
}

// ---------------------------------------------------------------------------------------------------------------
// The page.
// ---------------------------------------------------------------------------------------------------------------
const RECENT_SHOWN = 20;
const $ = id => document.getElementById(id);
const focusedInvocation = (location.pathname.match(/\/dashboard\/invocations\/([^/]+)/) || [])[1];

const state = { agents: [], commands: new Map(), hub: null, retry: 500, dirty: new Set(), scheduled: false };

function key(agentId, invocationId) { return `${agentId}/${invocationId}`; }

function handle(message) {
  switch (message.type) {
    case 'hello': $('user').textContent = `signed in as ${message.user}`; break;
    case 'agents': state.agents = message.agents || []; state.agentsKnown = true; renderAgents(); break;
    case 'reset':
      for (const [k, c] of state.commands) { if (c.agentId === message.agentId) { c.element.remove(); state.commands.delete(k); } }
      break;
    case 'command': upsertCommand(message.agentId, message.command); break;
    case 'output': {
      const c = state.commands.get(key(message.agentId, message.invocationId));
      if (c) { c.screen.write(message.text); markDirty(c); }
      break;
    }
    case 'gap': {
      const c = state.commands.get(key(message.agentId, message.invocationId));
      if (c) { c.screen.write(`\x1b[0m\x1b[2m[… ${message.bytes} bytes of output not shown]\x1b[0m\r\n`); markDirty(c); }
      break;
    }
    case 'error': showNotice(message.message); break;
    default: break;
  }
}

function upsertCommand(agentId, command) {
  const k = key(agentId, command.invocationId);
  let c = state.commands.get(k);
  if (!c) {
    const element = document.createElement('article');
    element.className = 'command';
    element.dataset.invocation = command.invocationId;
    element.dataset.agent = agentId;
    const head = document.createElement('div');
    head.className = 'head';
    const args = document.createElement('span');
    args.className = 'args';
    const status = document.createElement('span');
    status.className = 'status';
    const meta = document.createElement('span');
    meta.className = 'muted meta';
    head.append(args, status, meta);
    const output = document.createElement('pre');
    output.className = 'output';
    element.append(head, output);
    c = { agentId, element, args, status, meta, output, screen: new AnsiScreen(), command };
    state.commands.set(k, c);
    if (command.invocationId === focusedInvocation) { element.classList.add('focused'); }
  }
  c.command = command;
  c.args.textContent = `bazel ${command.args.join(' ')}`;
  c.args.title = c.args.textContent;
  const started = new Date(command.startedUnixMillis);
  c.meta.textContent = `${agentId} · ${started.toLocaleTimeString()} · ${command.invocationId}`;
  if (command.running) {
    c.status.className = 'status running';
    c.status.textContent = 'running';
  } else {
    c.status.className = `status ${command.exitCode === 0 ? 'ok' : 'failed'}`;
    c.status.textContent = `exit code ${command.exitCode}${command.signal ? ` (signal ${command.signal})` : ''} · ${formatDuration(command.durationMillis)}`;
    c.status.dataset.exitCode = String(command.exitCode);
  }
  placeCommands();
  markDirty(c);
}

function placeCommands() {
  const all = [...state.commands.values()].sort((a, b) => b.command.startedUnixMillis - a.command.startedUnixMillis);
  const running = all.filter(c => c.command.running);
  const recent = all.filter(c => !c.command.running).slice(0, RECENT_SHOWN);
  for (const c of all) { if (!running.includes(c) && !recent.includes(c)) { c.element.remove(); } }
  $('running').replaceChildren(...running.map(c => c.element));
  $('recent').replaceChildren(...recent.map(c => c.element));
  $('running').classList.toggle('recent', false);
  $('recent').classList.add('recent');
  $('running-section').hidden = running.length === 0;
  $('recent-section').hidden = recent.length === 0;
  const focused = focusedInvocation && all.find(c => c.command.invocationId === focusedInvocation);
  if (focused && !focused.scrolled) { focused.scrolled = true; focused.element.scrollIntoView({ block: 'start' }); }
}

function markDirty(c) {
  state.dirty.add(c);
  if (!state.scheduled) {
    state.scheduled = true;
    requestAnimationFrame(() => {
      state.scheduled = false;
      for (const d of state.dirty) {
        const atBottom = d.output.scrollTop + d.output.clientHeight >= d.output.scrollHeight - 4;
        d.screen.render(d.output);
        if (atBottom) { d.output.scrollTop = d.output.scrollHeight; }
      }
      state.dirty.clear();
    });
  }
}

function renderAgents() {
  $('agents-section').hidden = false;
  $('no-agents').hidden = state.agents.length > 0;
  const rows = state.agents.map(a => {
    const tr = document.createElement('tr');
    tr.dataset.agent = a.agentId;
    const idleSince = a.runningCommands ? null : (a.lastActivityUnixMillis || a.lastUsedUnixMillis);
    const cells = [
      a.agentId,
      a.sourcePath || a.repoHash,
      `${a.backend} ${a.backendRef}`,
      a.state,
      a.warm === undefined || a.warm === null ? (a.tunnel ? '…' : 'unknown') : (a.warm ? 'warm' : 'cold'),
      a.runningCommands ? `running ${a.runningCommands}` : (idleSince ? formatDuration(Date.now() - idleSince) : ''),
      a.tunnel ? `tunnel · ${a.liveTunnels} live, ${a.idleTunnels} idle` : 'no tunnel to this gateway (direct mode): commands not shown',
    ];
    cells.forEach((text, i) => {
      const td = document.createElement('td');
      td.textContent = text;
      if (i === 1) { td.className = 'path'; td.title = a.repoHash; }
      tr.appendChild(td);
    });
    return tr;
  });
  $('agents').tBodies[0].replaceChildren(...rows);
}

function formatDuration(ms) {
  if (ms < 1000) { return `${Math.max(0, Math.round(ms))} ms`; }
  const s = ms / 1000;
  if (s < 60) { return `${s.toFixed(1)} s`; }
  const m = Math.floor(s / 60);
  if (m < 60) { return `${m} min ${Math.round(s % 60)} s`; }
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function showNotice(text) { const n = $('notice'); n.textContent = text; n.hidden = !text; }

function setConnection(kind, text) {
  const badge = $('connection');
  badge.textContent = text;
  badge.className = `badge${kind === 'live' ? ' live' : ''}`;
  if (kind === 'live') { state.retry = 500; showNotice(''); $('signout').hidden = false; }
  if (kind === 'closed' || kind === 'error') {
    if (state.hub) { state.hub.close(); state.hub = null; }
    // Back again with a capped backoff; a fresh feed re-sends every agent's snapshot.
    setTimeout(connect, state.retry);
    state.retry = Math.min(state.retry * 2, 10000);
  }
}

async function connect() {
  if (state.hub) { return; }
  const hub = new HubStream('/dashboard/hub', handle, setConnection);
  state.hub = hub;
  try {
    await hub.start();
  } catch (e) {
    state.hub = null;
    if (e.unauthorized) { return signInOrAsk(); }
    setConnection('error', e.message);
  }
}

async function signIn(apiKey) {
  const response = await fetch('/dashboard/signin', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ apiKey }) });
  const reply = await response.json().catch(() => ({ message: `HTTP ${response.status}` }));
  if (!response.ok) { throw new Error(reply.message || `HTTP ${response.status}`); }
  $('signin').hidden = true;
  $('signout').hidden = false;
  connect();
}

// No session (first visit, expired, gateway restarted). Local mode accepts the empty key as its implicit user: try it
// once, and ask for a key only when it is refused.
function signInOrAsk() {
  if (state.triedEmptyKey) { return showSignIn(); }
  state.triedEmptyKey = true;
  return signIn('').catch(() => showSignIn());
}

function showSignIn(error) {
  $('signin').hidden = false;
  $('signout').hidden = true;
  $('signin-error').textContent = error || '';
}

document.addEventListener('DOMContentLoaded', () => {
  $('signin').addEventListener('submit', event => {
    event.preventDefault();
    signIn($('apikey').value).catch(e => showSignIn(e.message));
  });
  $('signout').addEventListener('click', () => { fetch('/dashboard/signout', { method: 'POST' }).finally(() => location.reload()); });
  // Idle times move on between updates.
  setInterval(() => { if (state.agentsKnown) { renderAgents(); } }, 5000);
  // With a session cookie the feed starts at once; without one the hub answers 401 and sign-in follows.
  connect();
});
