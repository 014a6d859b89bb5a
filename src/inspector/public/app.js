// corral inspector: draws the lifecycle machine from its definition, laid out on the server by
// ELK (GET /v1/machine), before any sandbox exists; then per sandbox the machine with its live
// state, a timeline of its states to scrub back through, and its events and exec output as they
// arrive (WebSocket /v1/events?name=…&since=0). A label filter narrows the sandboxes. No
// dependencies, nothing fetched from outside this server.

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

/**
 * The machine as an SVG: state boxes (nested ones inside their parent), and each transition
 * routed and labelled where the server's ELK layout put it (GET /v1/machine): no label sits
 * on another or on a state.
 */
function drawGraph() {
  const root = svg('svg', { class: 'graph', viewBox: `0 0 ${graph.width} ${graph.height}`, width: graph.width, height: graph.height, role: 'img' });
  const defs = svg('defs');
  const marker = svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
  marker.append(svg('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: '#9aa5b5' }));
  defs.append(marker);
  root.append(defs);
  const states = new Map();
  // Painted in layers: compound states, then the edges (on top of the boxes they run inside),
  // then the leaf states, then the labels over everything.
  const compounds = svg('g', { class: 'compounds' });
  const leaves = svg('g', { class: 'leaves' });
  for (const n of graph.nodes) {
    const g = svg('g', { class: `state ${n.type === 'compound' ? 'compound' : ''}`, 'data-state': n.key, 'data-id': n.id });
    g.append(svg('rect', { x: n.x, y: n.y, width: n.width, height: n.height, rx: n.type === 'final' ? 16 : 6 }));
    const t = svg('text', n.type === 'compound' ? { x: n.x + 8, y: n.y + 17 } : { x: n.x + n.width / 2, y: n.y + n.height / 2 + 4, 'text-anchor': 'middle' });
    t.textContent = n.key;
    g.append(t);
    (n.type === 'compound' ? compounds : leaves).append(g);
    states.set(n.id, g);
  }
  const edges = svg('g', { class: 'edges' });
  const labels = svg('g', { class: 'labels' });
  for (const e of graph.edges) {
    if (!e.points || e.points.length < 2) continue;
    const g = svg('g', { class: 'edge', 'data-event': e.event, 'data-source': e.source, 'data-target': e.target });
    g.append(svg('path', { d: e.points.map((p, i) => `${i ? 'L' : 'M'} ${p.x} ${p.y}`).join(' '), 'marker-end': 'url(#arrow)' }));
    edges.append(g);
    if (e.label) {
      const l = svg('g', { class: 'edge-label', 'data-event': e.event, 'data-source': e.source, 'data-target': e.target });
      l.append(svg('rect', { x: e.label.x, y: e.label.y, width: e.label.width, height: e.label.height, rx: 3 }));
      const t = svg('text', { x: e.label.x + e.label.width / 2, y: e.label.y + e.label.height - 3.5, 'text-anchor': 'middle' });
      t.textContent = e.event;
      l.append(t);
      labels.append(l);
    }
  }
  root.append(compounds, edges, leaves, labels);
  return { root, states };
}

/** Highlights `state` (a leaf's name) and the compound states that hold it. */
function highlight(states, state) {
  for (const [id, g] of states) {
    const leaf = id.split('.').pop();
    const onPath = leaf === state || [...states.keys()].some((other) => other.split('.').pop() === state && other.startsWith(`${id}.`));
    g.classList.toggle('active', onPath);
  }
}

/** The label filter of the header (`key=value`): cards without that label are hidden. */
function applyFilter() {
  const f = document.getElementById('filter').value.trim();
  const eq = f.indexOf('=');
  const [k, v] = eq > 0 ? [f.slice(0, eq), f.slice(eq + 1)] : [f, undefined];
  for (const c of cards.values()) {
    const show = !f || (v === undefined ? k in c.labels : c.labels[k] === v);
    c.section.hidden = !show;
  }
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
  const timeline = el('input', { type: 'range', min: '0', max: '0', value: '0', 'data-role': 'timeline', 'aria-label': `timeline of ${name}` });
  const when = el('span', { class: 'meta', 'data-role': 'when' }, 'live');
  const live = el('button', { type: 'button', 'data-role': 'live' }, 'live');
  const tags = el('span', { class: 'meta', 'data-role': 'labels' }, '');
  const section = el(
    'section',
    { class: 'sandbox', 'data-sandbox': name },
    el('h2', {}, name, badge, current, meta, tags),
    el(
      'div',
      { class: 'body' },
      el('div', { class: 'chart' }, root),
      global,
      el('div', { class: 'timeline' }, el('span', { class: 'meta' }, 'timeline'), timeline, when, live),
      el('div', { class: 'panes' }, el('div', { class: 'pane' }, el('h3', {}, 'events'), log), el('div', { class: 'pane' }, el('h3', {}, 'exec output'), output)),
    ),
  );
  document.getElementById('sandboxes').append(section);
  c = { name, section, states, badge, current, meta, log, output, tags, labels: {}, timeline, when, history: [], scrubbed: false, state: null, ws: null, lastSeq: 0, done: false };
  // Scrubbing back shows the state the sandbox was in at that point and the events up to it.
  timeline.addEventListener('input', () => scrub(c, Number(timeline.value)));
  live.addEventListener('click', () => scrub(c, c.history.length - 1, true));
  applyFilter();
  cards.set(name, c);
  return c;
}

function setState(c, state, status, e) {
  c.state = state;
  c.section.dataset.currentState = state;
  c.current.textContent = `state: ${state}`;
  if (status) {
    c.badge.textContent = status;
    c.badge.className = `badge ${status}`;
    c.section.dataset.status = status;
  }
  if (e) {
    c.history.push({ seq: e.seq, ts: e.ts, state, event: e.snapshot ? undefined : e.type });
    c.timeline.max = String(c.history.length - 1);
    if (!c.scrubbed) c.timeline.value = c.timeline.max;
  }
  if (!c.scrubbed) {
    c.section.dataset.viewState = state;
    highlight(c.states, state);
  }
}

/** Shows the card as it was at history entry `i`; the last entry (or `toLive`) follows the sandbox again. */
function scrub(c, i, toLive = false) {
  const h = c.history[i];
  if (!h) return;
  c.scrubbed = !toLive && i < c.history.length - 1;
  c.timeline.value = String(i);
  c.section.dataset.viewState = h.state;
  c.section.classList.toggle('scrubbed', c.scrubbed);
  c.when.textContent = c.scrubbed ? `#${h.seq} · ${new Date(h.ts).toLocaleTimeString()} · ${h.state}` : 'live';
  highlight(c.states, h.state);
  for (const line of c.log.children) line.classList.toggle('later', c.scrubbed && Number(line.dataset.seq) > h.seq);
}

function appendLog(c, e) {
  const line = document.createElement('div');
  line.dataset.seq = String(e.seq);
  if (c.scrubbed) line.classList.add('later');
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
  if (e.type === 'sandbox.state') setState(c, e.state, e.status, e);
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
      c.labels = s.labels ?? {};
      c.tags.textContent = Object.entries(c.labels).map(([k, v]) => `${k}=${v}`).join(' ');
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
    applyFilter();
  } catch (err) {
    conn.textContent = `disconnected: ${err.message}`;
  }
}

async function main() {
  const res = await fetch('/v1/machine', { headers: auth });
  graph = await res.json();
  // The lifecycle chart itself, before (and whether or not) any sandbox exists.
  const { root } = drawGraph();
  document.getElementById('machine').append(root);
  document.getElementById('filter').addEventListener('input', applyFilter);
  await refresh();
  setInterval(refresh, 1500);
}

main();
