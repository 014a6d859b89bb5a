// The module graph of src/, workers/ and machines/: no import cycles, and dependencies that
// point inward (README "How it fits together"). Read from the sources, nothing runs.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { importCycles, importGraph, type ImportEdge } from './helpers/importGraph.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const edges = importGraph(ROOT, ['src', 'workers', 'machines']);

const within = (file: string, dirs: readonly string[]) => dirs.some((d) => file === d || file.startsWith(`${d}/`));

/** The rooms from the outside in; a room imports only rooms after it (and its own files). */
const FRONTS = ['src/cli', 'src/server', 'src/mcp', 'src/detached', 'src/node', 'src/index.ts', 'src/inspector'];
const SDK = ['src/sdk'];
const SUPERVISOR = ['src/supervisor'];
// src/cluster is the client side of a cluster (registry, catalog, placement): the NATS link
// stands on it; a node's service (src/node) is a front, like a detached host.
const LINKS = ['src/link', 'src/pool', 'src/cluster'];
const ACTOR = ['src/actor'];
const WORKERS = ['workers'];

/** Imports from `from` into any of `to`. */
function crossing(from: readonly string[], to: readonly string[]): string[] {
  return edges.filter((e: ImportEdge) => within(e.from, from) && within(e.to, to)).map((e) => `${e.from} → ${e.to}`);
}

describe('module layout', () => {
  it('reads a graph of the real size', () => {
    expect(edges.length).toBeGreaterThan(300);
    expect(edges).toContainEqual({ from: 'workers/sandbox.worker.ts', to: 'src/actor/SandboxActor.ts', typeOnly: false });
  });

  it('has no import cycles, type-only imports included', () => {
    expect(importCycles(edges)).toEqual([]);
  });

  it('points inward: fronts → SDK → supervisor → links and pool → actor → machines and the base', () => {
    const inner = (...rooms: string[][]) => rooms.flat();
    expect(crossing(SDK, inner(FRONTS))).toEqual([]);
    expect(crossing(SUPERVISOR, inner(FRONTS, SDK))).toEqual([]);
    expect(crossing(LINKS, inner(FRONTS, SDK, SUPERVISOR))).toEqual([]);
    expect(crossing(ACTOR, inner(FRONTS, SDK, SUPERVISOR, LINKS))).toEqual([]);
    // The base (vm, agent, image, guestenv, snapshot, store, bus…) knows none of the rooms.
    const base = edges.map((e) => e.from).filter((f) => f.startsWith('src/') && !within(f, inner(FRONTS, SDK, SUPERVISOR, LINKS, ACTOR)));
    expect(crossing([...new Set(base)], inner(FRONTS, SDK, SUPERVISOR, LINKS, ACTOR))).toEqual([]);
    // Snapshot files are the supervisor's: the SDK reads their type and forks through it.
    expect(edges.filter((e) => within(e.from, SDK) && within(e.to, ['src/snapshot']) && !e.typeOnly && e.to !== 'src/snapshot/fork.ts').map((e) => `${e.from} → ${e.to}`)).toEqual([]);
    // Worker entry files are started by path, never imported.
    expect(crossing(['src', 'machines'], WORKERS)).toEqual([]);
  });

  it('keeps the machines free of I/O: they import only types, errors and each other', () => {
    expect(crossing(['machines'], ['src']).filter((e) => !/→ src\/(bus\/events|errors)\.ts$/.test(e))).toEqual([]);
    const machineFiles = [...new Set(edges.map((e) => e.from).filter((f) => f.startsWith('machines/')))];
    expect(machineFiles.length).toBeGreaterThan(0);
    for (const f of machineFiles) expect(readFileSync(`${ROOT}/${f}`, 'utf8'), f).not.toMatch(/from ['"]node:/);
  });

  it('keeps the worker entry short: it wires ports to actors', () => {
    expect(readFileSync(`${ROOT}/workers/sandbox.worker.ts`, 'utf8').split('\n').length).toBeLessThan(80);
  });
});
