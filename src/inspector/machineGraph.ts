/**
 * The lifecycle machine as a graph the inspector page can draw: its states (nested ones
 * inside their parent's box) and transitions, read from the machine definition itself
 * (xstate 5 state nodes are introspectable), laid out by ELK (elkjs: the Eclipse Layout
 * Kernel's layered algorithm, with edge routing and label placement; a hand-made layout
 * piled the labels of `live`'s transitions on each other).
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

/** A point of the page, px. */
export interface Point {
  readonly x: number;
  readonly y: number;
}

/** A transition: `event` moves the machine from `source` to `target`. */
export interface GraphEdge {
  readonly source: string;
  readonly target: string;
  readonly event: string;
  /** The route: start, bends, end (absent for the root's transitions, which are not drawn). */
  readonly points?: readonly Point[];
  /** Where the event's label goes: a box of its own, clear of the other labels and of the states. */
  readonly label?: { readonly x: number; readonly y: number; readonly width: number; readonly height: number };
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

const LEAF_W = 120;
const LEAF_H = 32;
const PAD = 14;
const HEADER = 28;
const MARGIN = 20;

/** A readable name for xstate's internal event types. */
function eventLabel(type: string): string {
  if (type.startsWith('xstate.done.actor')) return 'done';
  if (type.startsWith('xstate.error.actor')) return 'error';
  const after = /^xstate\.after\.([^.]+)/.exec(type);
  if (after) return `after ${after[1]}`;
  return type;
}

/**
 * The graph of a machine, laid out (computed once per machine object).
 *
 * @example
 * const g = await machineGraph(sandboxMachine); // g.nodes[…].key === 'running'
 */
export function machineGraph(machine: AnyStateMachine): Promise<MachineGraph> {
  let g = cache.get(machine);
  if (!g) {
    g = buildGraph(machine);
    cache.set(machine, g);
    // A failed layout is not kept: the next call tries again.
    g.catch(() => cache.delete(machine));
  }
  return g;
}

function buildGraph(machine: AnyStateMachine): Promise<MachineGraph> {
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

  return layout(root, edges, global);
}

/** Label boxes are sized for the page's edge-label font (11 px monospace: ~6.7 px a character). */
const LABEL_CHAR_W = 6.7;
const LABEL_H = 14;

interface ElkNodeOut {
  id: string;
  x?: number;
  y?: number;
  width?: number;
  height?: number;
  children?: ElkNodeOut[];
  edges?: { id: string; sections?: { startPoint: Point; endPoint: Point; bendPoints?: Point[] }[]; labels?: { text: string; x?: number; y?: number; width?: number; height?: number }[] }[];
}

type Elk = { layout(graph: unknown): Promise<unknown> };
let elk: Promise<Elk> | undefined;

/** ELK, loaded on the first layout (1.6 MB of JavaScript no other code path needs). */
function loadElk(): Promise<Elk> {
  elk ??= import('elkjs/lib/elk.bundled.js').then((m) => {
    // A CommonJS module: under Node's ESM its default import is the constructor itself; typed as the module.
    const ctor = (typeof m.default === 'function' ? m.default : (m.default as { default: unknown }).default) as unknown as new () => Elk;
    return new ctor();
  });
  return elk;
}
const cache = new WeakMap<object, Promise<MachineGraph>>();

/**
 * Lays the states and transitions out with ELK's layered algorithm (nested states inside
 * their parent, edges routed around the boxes, each label given a place of its own, so none
 * sits on another or on a state). Absolute coordinates throughout.
 */
async function layout(root: StateNodeLike, edges: GraphEdge[], global: GraphEdge[]): Promise<MachineGraph> {
  const toElk = (n: StateNodeLike): Record<string, unknown> => {
    const kids = Object.values(n.states);
    return kids.length === 0
      ? { id: n.id, width: LEAF_W, height: LEAF_H }
      : {
          id: n.id,
          layoutOptions: { 'elk.padding': `[top=${HEADER},left=${PAD},bottom=${PAD},right=${PAD}]` },
          children: kids.map(toElk),
        };
  };
  const graph = {
    id: root.id,
    layoutOptions: {
      'elk.algorithm': 'layered',
      'elk.direction': 'RIGHT',
      'elk.hierarchyHandling': 'INCLUDE_CHILDREN',
      'elk.edgeRouting': 'ORTHOGONAL',
      'elk.edgeLabels.placement': 'CENTER',
      'elk.layered.edgeLabels.sideSelection': 'ALWAYS_UP',
      'elk.spacing.nodeNode': '28',
      'elk.spacing.edgeLabel': '4',
      'elk.spacing.edgeEdge': '12',
      'elk.spacing.edgeNode': '14',
      'elk.layered.spacing.nodeNodeBetweenLayers': '48',
      'elk.layered.spacing.edgeNodeBetweenLayers': '18',
      'elk.layered.spacing.edgeEdgeBetweenLayers': '12',
      'elk.padding': `[top=${MARGIN},left=${MARGIN},bottom=${MARGIN},right=${MARGIN}]`,
      'elk.json.shapeCoords': 'ROOT',
      'elk.json.edgeCoords': 'ROOT',
    },
    children: Object.values(root.states).map(toElk),
    edges: edges.map((e, i) => ({
      id: `e${i}`,
      sources: [e.source],
      targets: [e.target],
      labels: [{ text: e.event, width: Math.ceil(e.event.length * LABEL_CHAR_W) + 6, height: LABEL_H }],
    })),
  };
  const out = (await (await loadElk()).layout(graph)) as ElkNodeOut;
  const nodes: GraphNode[] = [];
  const byId = new Map<string, StateNodeLike>();
  const index = (n: StateNodeLike) => {
    byId.set(n.id, n);
    for (const c of Object.values(n.states)) index(c);
  };
  index(root);
  const walk = (n: ElkNodeOut, parent: string | null) => {
    const s = byId.get(n.id)!;
    nodes.push({ id: n.id, key: s.key, parent, type: s.type, x: n.x ?? 0, y: n.y ?? 0, width: n.width ?? LEAF_W, height: n.height ?? LEAF_H });
    for (const c of n.children ?? []) walk(c, n.id);
  };
  for (const c of out.children ?? []) walk(c, null);
  // ELK puts an edge in the graph of the nodes it connects (with ROOT coordinates, wherever it sits).
  const laid = new Map<string, NonNullable<ElkNodeOut['edges']>[number]>();
  const gather = (n: ElkNodeOut) => {
    for (const e of n.edges ?? []) laid.set(e.id, e);
    for (const c of n.children ?? []) gather(c);
  };
  gather(out);
  const routed: GraphEdge[] = edges.map((e, i) => {
    const l = laid.get(`e${i}`);
    const sec = l?.sections?.[0];
    const label = l?.labels?.[0];
    return {
      ...e,
      ...(sec ? { points: [sec.startPoint, ...(sec.bendPoints ?? []), sec.endPoint] } : {}),
      ...(label && label.x !== undefined && label.y !== undefined ? { label: { x: label.x, y: label.y, width: label.width ?? 0, height: label.height ?? LABEL_H } } : {}),
    };
  });
  return { id: root.id, nodes, edges: routed, global, width: Math.ceil(out.width ?? 0), height: Math.ceil(out.height ?? 0) };
}

