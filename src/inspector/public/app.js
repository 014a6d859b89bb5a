// corral inspector: draws each sandbox's lifecycle machine from its definition (GET /v1/machine),
// highlights the live state, and shows events and exec output as they arrive (WebSocket
// /v1/events?name=…&since=0). No dependencies, nothing fetched from outside this server.

const params = new URLSearchParams(location.search);
const token = params.get('token');
const auth = token ? { Authorization: `Bearer ${token}` } : {};
const SVG = 'http://www.w3.org/2000/svg';
const MAX_LOG = 300;
const MAX_OUTPUT = 64 * 1024;
const cards = new Map();
let graph;

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const k of kids) e.append(k);
  return e;
}
function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}
function decode(data) {
  if (data && typeof data.$b64 === 'string') {
    const bin = atob(data.$b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new TextDecoder().decode(bytes);
  }
  return '';
}

/** Where a line from box a's centre to box b's centre leaves box a. */
function border(a, bx, by) {
  const cx = a.x + a.width / 2, cy = a.y + a.height / 2;
  const dx = bx - cx, dy = by - cy;
  if (dx === 0 && dy === 0) return [cx, cy];
  const sx = Math.abs(dx) > 0 ? a.width / 2 / Math.abs(dx) : Infinity;
  const sy = Math.abs(dy) > 0 ? a.height / 2 / Math.abs(dy) : Infinity;
  const s = Math.min(sx, sy);
  return [cx + dx * s, cy + dy * s];
}

/** Pairs of arcs between the same two boxes start a little apart. */
function y1Offset(a, b) {
  return a.y < b.y ? 5 : -5;
}

function drawGraph() {
  const root = svg('svg', { class: 'graph', viewBox: `0 0 ${graph.width} ${graph.height}`, role: 'img' });
  const defs = svg('defs');
  const marker = svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
  marker.append(svg('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: '#9aa5b5' }));
  defs.append(marker);
  root.append(defs);
  const byId = new Map(graph.nodes.map((n) => [n.id, n]));
  const states = new Map();
  for (const n of graph.nodes) {
    const g = svg('g', { class: `state ${n.type === 'compound' ? 'compound' : ''}`, 'data-state': n.key, 'data-id': n.id });
    g.append(svg('rect', { x: n.x, y: n.y, width: n.width, height: n.height, rx: n.type === 'final' ? 16 : 6 }));
    const t = svg('text', n.type === 'compound' ? { x: n.x + 8, y: n.y + 16 } : { x: n.x + n.width / 2, y: n.y + n.height / 2 + 4, 'text-anchor': 'middle' });
    t.textContent = n.key;
    g.append(t);
    root.append(g);
    states.set(n.id, g);
  }
  const pairs = new Map();
  for (const e of graph.edges) {
    const a = byId.get(e.source), b = byId.get(e.target);
    if (!a || !b) continue;
    const key = [e.source, e.target].sort().join('|');
    const nth = pairs.get(key) ?? 0;
    pairs.set(key, nth + 1);
    let x1, y1, x2, y2, cx, cy;
    if (a.x === b.x) {
      // Stacked siblings (running ⇄ paused): an arc out of the right side, not through the boxes between.
      const side = 1;
      x1 = side > 0 ? a.x + a.width : a.x;
      x2 = side > 0 ? b.x + b.width : b.x;
      y1 = a.y + a.height / 2 + (y1Offset(a, b));
      y2 = b.y + b.height / 2 - (y1Offset(a, b));
      cx = x1 + side * (22 + 10 * nth + (8 * Math.abs(y2 - y1)) / 40);
      cy = (y1 + y2) / 2;
    } else {
      [x1, y1] = border(a, b.x + b.width / 2, b.y + b.height / 2);
      [x2, y2] = border(b, a.x + a.width / 2, a.y + a.height / 2);
      // Bend each edge of a pair to its own side so labels do not sit on each other.
      const len = Math.hypot(x2 - x1, y2 - y1) || 1;
      const bend = (nth % 2 === 0 ? 1 : -1) * (14 + 10 * Math.floor(nth / 2));
      cx = (x1 + x2) / 2 - ((y2 - y1) / len) * bend;
      cy = (y1 + y2) / 2 + ((x2 - x1) / len) * bend;
    }
    const mx = (x1 + x2) / 2, my = (y1 + y2) / 2;
    const g = svg('g', { class: 'edge', 'data-event': e.event, 'data-source': e.source, 'data-target': e.target });
    g.append(svg('path', { d: `M ${x1} ${y1} Q ${cx} ${cy} ${x2} ${y2}`, 'marker-end': 'url(#arrow)' }));
    const label = svg('text', { x: (mx + cx) / 2, y: (my + cy) / 2 - 2, 'text-anchor': 'middle' });
    label.textContent = e.event;
    g.append(label);
    root.insertBefore(g, root.children[1]);
  }
  return { root, states };
}

function card(name) {
  let c = cards.get(name);
  if (c) return c;
  document.getElementById('empty')?.remove();
  const { root, states } = drawGraph();
  const badge = el('span', { class: 'badge', 'data-role': 'status' }, '…');
  const current = el('span', { class: 'meta', 'data-role': 'state' }, '');
  const meta = el('span', { class: 'meta', 'data-role': 'meta' }, '');
  const log = el('pre', { class: 'log', 'data-role': 'events' });
  const output = el('pre', { class: 'output', 'data-role': 'output' });
  const global = el('p', { class: 'global' }, `from any state: ${graph.global.map((e) => `${e.event} → ${e.target.split('.').pop()}`).join(', ')}`);
  const section = el(
    'section',
    { class: 'sandbox', 'data-sandbox': name },
    el('h2', {}, name, badge, current, meta),
    el('div', { class: 'body' }, el('div', {}, root, global), el('div', { class: 'panes' }, el('div', { class: 'pane' }, el('h3', {}, 'events'), log), el('div', { class: 'pane' }, el('h3', {}, 'exec output'), output))),
  );
  document.getElementById('sandboxes').append(section);
  c = { name, section, states, badge, current, meta, log, output, state: null, ws: null, lastSeq: 0, done: false };
  cards.set(name, c);
  return c;
}

function setState(c, state, status) {
  c.state = state;
  c.section.dataset.currentState = state;
  c.current.textContent = `state: ${state}`;
  if (status) {
    c.badge.textContent = status;
    c.badge.className = `badge ${status}`;
    c.section.dataset.status = status;
  }
  for (const [id, g] of c.states) {
    const leaf = id.split('.').pop();
    const onPath = leaf === state || [...c.states.keys()].some((other) => other.split('.').pop() === state && other.startsWith(`${id}.`));
    g.classList.toggle('active', onPath);
  }
}

function appendLog(c, e) {
  const line = document.createElement('div');
  const kind = e.type.startsWith('sandbox.state') ? 't-state' : e.type.startsWith('exec.') ? 't-exec' : e.type === 'stream.gap' ? 't-gap' : '';
  const seq = el('span', { class: 'seq' }, `#${e.seq} `);
  let detail = '';
  if (e.type === 'sandbox.state') detail = ` → ${e.state}`;
  else if (e.type === 'exec.started') detail = ` ${e.argv.join(' ')}`;
  else if (e.type === 'exec.exited') detail = ` code=${e.code} signal=${e.signal}`;
  else if (e.type === 'exec.stdout' || e.type === 'exec.stderr') detail = ` ${decode(e.data).length} chars`;
  else if (e.type === 'sandbox.stopped') detail = ` (${e.reason})`;
  else if (e.type === 'stream.gap') detail = ` events ${e.since + 1}…${e.missed} are no longer buffered`;
  line.append(seq, el('span', { class: kind }, e.type + detail));
  c.log.append(line);
  while (c.log.childElementCount > MAX_LOG) c.log.firstElementChild.remove();
  c.log.scrollTop = c.log.scrollHeight;
}

function appendOutput(c, e) {
  const span = el('span', { class: e.type === 'exec.stderr' ? 'stderr' : 'stdout' }, decode(e.data));
  c.output.append(span);
  while (c.output.textContent.length > MAX_OUTPUT && c.output.firstChild) c.output.firstChild.remove();
  c.output.scrollTop = c.output.scrollHeight;
}

function onEvent(c, e) {
  c.lastSeq = e.seq;
  appendLog(c, e);
  if (e.type === 'sandbox.state') setState(c, e.state, e.status);
  else if (e.type === 'exec.stdout' || e.type === 'exec.stderr') appendOutput(c, e);
  else if (e.type === 'sandbox.started') c.meta.textContent = `pid ${e.pid} · ${e.accel} · boot ${Math.round(e.bootMs)} ms`;
  else if (e.type === 'sandbox.stopped') c.done = true;
}

function subscribe(c) {
  const q = new URLSearchParams({ name: c.name, since: String(c.lastSeq) });
  if (token) q.set('token', token);
  const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/events?${q}`);
  c.ws = ws;
  ws.onmessage = (m) => onEvent(c, JSON.parse(m.data));
  ws.onclose = () => {
    c.ws = null;
  };
}

async function refresh() {
  const conn = document.getElementById('conn');
  try {
    const res = await fetch('/v1/sandboxes', { headers: auth });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const list = await res.json();
    conn.textContent = `connected · ${list.length} sandbox${list.length === 1 ? '' : 'es'} · ${new Date().toLocaleTimeString()}`;
    for (const s of list) {
      const c = card(s.name);
      if (!c.state) setState(c, s.status === 'stopped' ? 'stopped' : s.status, s.status);
      // Running and not followed (new, or the stream ended): follow it, resuming after the last seq.
      if (s.status !== 'stopped' && !c.ws) {
        c.done = false;
        subscribe(c);
      }
      // A stopped one: its buffered history once (the stream ends after it).
      if (s.status === 'stopped' && !c.ws && !c.replayed) subscribe(c);
      c.replayed = true;
      if (s.status === 'stopped' && c.state !== 'stopped' && !c.ws) setState(c, 'stopped', 'stopped');
    }
  } catch (err) {
    conn.textContent = `disconnected: ${err.message}`;
  }
}

async function main() {
  const res = await fetch('/v1/machine', { headers: auth });
  graph = await res.json();
  await refresh();
  setInterval(refresh, 1500);
}

main();
