/**
 * The lifecycle machine as a graph the inspector page can draw: its states (nested ones
 * inside their parent's box) and transitions, read from the machine definition itself
 * (xstate 5 state nodes are introspectable), with a simple deterministic layout.
 */

import type { AnyStateMachine } from 'xstate';

/** A state of the machine, with its box on the page. */
export interface GraphNode {
  /** The xstate id (`sandbox.live.running`). */
  readonly id: string;
  /** The state's own name (`running`): what `sandbox.state` events call the leaf state. */
  readonly key: string;
  readonly parent: string | null;
  readonly type: string;
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
}

/** A transition: `event` moves the machine from `source` to `target`. */
export interface GraphEdge {
  readonly source: string;
  readonly target: string;
  readonly event: string;
}

/** What {@link machineGraph} returns. */
export interface MachineGraph {
  readonly id: string;
  readonly nodes: GraphNode[];
  readonly edges: GraphEdge[];
  /** Transitions of the root: taken from whatever state the machine is in. */
  readonly global: GraphEdge[];
  readonly width: number;
  readonly height: number;
}

interface StateNodeLike {
  readonly id: string;
  readonly key: string;
  readonly type: string;
  readonly states: Record<string, StateNodeLike>;
  readonly transitions: Map<string, ReadonlyArray<{ readonly target?: ReadonlyArray<{ readonly id: string }> | undefined }>>;
  readonly always?: ReadonlyArray<{ readonly target?: ReadonlyArray<{ readonly id: string }> | undefined }>;
  readonly initial?: { readonly target: ReadonlyArray<{ readonly id: string }> } | undefined;
}

const LEAF_W = 130;
const LEAF_H = 34;
const PAD = 12;
const HEADER = 26;
const COL_GAP = 110;
const ROW_GAP = 40;
const MARGIN = 30;

/** A readable name for xstate's internal event types. */
function eventLabel(type: string): string {
  if (type.startsWith('xstate.done.actor')) return 'done';
  if (type.startsWith('xstate.error.actor')) return 'error';
  const after = /^xstate\.after\.([^.]+)/.exec(type);
  if (after) return `after ${after[1]}`;
  return type;
}

/**
 * @example
 * const g = machineGraph(sandboxMachine); // g.nodes[…].key === 'running'
 */
export function machineGraph(machine: AnyStateMachine): MachineGraph {
  const root = machine.root as unknown as StateNodeLike;
  const edges: GraphEdge[] = [];
  const global: GraphEdge[] = [];
  const seen = new Set<string>();
  const collect = (n: StateNodeLike) => {
    const add = (event: string, targets: ReadonlyArray<{ id: string }> | undefined) => {
      for (const t of targets ?? []) {
        if (t.id === n.id) continue; // re-entering itself (exec) changes nothing to draw
        const key = `${n.id}|${t.id}|${event}`;
        if (seen.has(key)) continue;
        seen.add(key);
        (n === root ? global : edges).push({ source: n.id, target: t.id, event });
      }
    };
    for (const [type, ts] of n.transitions) for (const t of ts) add(eventLabel(type), t.target);
    for (const t of n.always ?? []) add('always', t.target);
    for (const c of Object.values(n.states)) collect(c);
  };
  collect(root);

  // Columns: the longest path from the initial state among the top-level states.
  const top = Object.values(root.states);
  const topOf = new Map<string, string>();
  for (const t of top) {
    const mark = (n: StateNodeLike) => {
      topOf.set(n.id, t.id);
      for (const c of Object.values(n.states)) mark(c);
    };
    mark(t);
  }
  const next = new Map<string, Set<string>>(top.map((t) => [t.id, new Set<string>()]));
  for (const e of edges) {
    const a = topOf.get(e.source);
    const b = topOf.get(e.target);
    if (a && b && a !== b) next.get(a)!.add(b);
  }
  const rank = new Map<string, number>();
  const initial = root.initial?.target[0]?.id ?? top[0]?.id;
  const visit = (id: string, r: number, path: Set<string>) => {
    if ((rank.get(id) ?? -1) >= r) return;
    rank.set(id, r);
    for (const n of next.get(id) ?? []) if (!path.has(n)) visit(n, r + 1, new Set([...path, n]));
  };
  if (initial) visit(initial, 0, new Set([initial]));
  // States only the root leads to (killing): one column before their first target.
  for (const t of top) {
    if (rank.has(t.id)) continue;
    const targets = [...(next.get(t.id) ?? [])].map((n) => rank.get(n) ?? 1);
    rank.set(t.id, Math.max(0, Math.min(...targets, 99) - 1));
  }

  const nodes: GraphNode[] = [];
  const size = (n: StateNodeLike): { w: number; h: number } => {
    const kids = Object.values(n.states);
    if (kids.length === 0) return { w: LEAF_W, h: LEAF_H };
    const ks = kids.map(size);
    return { w: Math.max(...ks.map((k) => k.w)) + 2 * PAD, h: HEADER + ks.reduce((a, k) => a + k.h, 0) + PAD * kids.length };
  };
  const place = (n: StateNodeLike, parent: string | null, x: number, y: number, w: number) => {
    const s = size(n);
    nodes.push({ id: n.id, key: n.key, parent, type: n.type, x, y, width: w, height: s.h });
    let cy = y + HEADER;
    for (const c of Object.values(n.states)) {
      const cs = size(c);
      place(c, n.id, x + PAD, cy, w - 2 * PAD);
      cy += cs.h + PAD;
    }
  };
  const columns = new Map<number, StateNodeLike[]>();
  for (const t of top) {
    const r = rank.get(t.id)!;
    if (!columns.has(r)) columns.set(r, []);
    columns.get(r)!.push(t);
  }
  let x = MARGIN;
  let height = 0;
  for (const r of [...columns.keys()].sort((a, b) => a - b)) {
    const col = columns.get(r)!;
    const w = Math.max(...col.map((t) => size(t).w));
    let y = MARGIN;
    for (const t of col) {
      place(t, null, x, y, w);
      y += size(t).h + ROW_GAP;
    }
    height = Math.max(height, y - ROW_GAP + MARGIN);
    x += w + COL_GAP;
  }
  return { id: root.id, nodes, edges, global, width: x - COL_GAP + MARGIN, height };
}
