/**
 * What corral nodes and clients say to each other over NATS: subject names, the KV buckets
 * and the event stream, the records they hold, and the encoding of requests and replies.
 *
 *   corral.node.<node>.create          { config }            → { result: SandboxInfo }
 *   corral.node.<node>.remove          { name }              → { result: null }
 *   corral.node.<node>.config          { name }              → { result: SandboxConfig }
 *   corral.node.<node>.drain           {}                    → { result: DrainReport }
 *   corral.node.<node>.start           { name }              → { result: SandboxInfo } (a stopped one, again)
 *   corral.node.<node>.logs            { name, options }     → { result: LogEntry[] }
 *   corral.node.<node>.snapshot.remove { name }              → { result: null } (a fork's snapshot, once its forks run)
 *   corral.node.<node>.snapshot.list   {}                    → { result: string[] } (the snapshots it holds)
 *   corral.node.<node>.metrics         { name, sampler }     → { result: SandboxMetrics } (sampled there)
 *   corral.node.<node>.receive.<step>  a sandbox moving here (src/node/transfer.ts)
 *   corral.node.<node>.sb.<method>     { name, args }        → { result } (a SandboxApi call)
 *   corral.node.<node>.sandbox.<name>.<method>
 *                                      { name, args }        → { result } (one of {@link WORKER_CALLS},
 *                                      answered by the sandbox's worker itself; nobody there: ask sb.<method>)
 *   corral.ev.<sandbox>                one SandboxEvent per message, kept by {@link EVENTS_STREAM}
 *   corral.live.<sandbox>              the same event once stored, republished by the stream
 *                                      (its stream sequence in the Nats-Sequence header)
 *
 * Every reply is `{ result }` or `{ error }` (a {@link SerializedError}: `code` crosses the wire).
 * Bytes travel as `{ $b64 }` (src/link/wire.ts).
 */

import { deserializeError, serializeError, type SerializedError } from '../errors.ts';
import type { SandboxEvent, SandboxStatus, StopReason } from '../bus/events.ts';
import { fromWire, toWire } from '../link/wire.ts';

/** KV bucket of the node registry: key = node name, value = {@link NodeRecord}. */
export const NODES_BUCKET = 'corral-nodes';
/** KV bucket of the sandbox catalog: key = sandbox name, value = {@link CatalogEntry}. */
export const CATALOG_BUCKET = 'corral-sandboxes';
/** JetStream stream keeping every sandbox's events, on {@link eventSubject}s. */
export const EVENTS_STREAM = 'CORRAL_EVENTS';

/** The subject of a node's verb (`create`, `remove`, `sb.<method>`). */
export const nodeSubject = (node: string, verb: string): string => `corral.node.${node}.${verb}`;
/**
 * The calls a node's sandbox answers in its worker thread, on `sandbox.<name>.<method>` (the
 * worker's own NATS connection), without the node's main thread between: plain
 * request/reply calls that change nothing the node keeps (catalog, registry). The rest, and
 * these where the worker does not answer (a sandbox stopped, moved, or of an older node),
 * go to the node's `sb.<method>`.
 */
export const WORKER_CALLS: ReadonlySet<string> = new Set(['exec', 'writeStdin', 'closeStdin', 'signalExec', 'resizeExec', 'ackOutput', 'fs', 'execs', 'ping']);

/** The verb under which sandbox `name`'s worker answers its {@link WORKER_CALLS} (`<verb>.<method>`). */
export const sandboxVerb = (name: string): string => `sandbox.${name}`;

/** The stored event subject of one sandbox (`*` for all). */
export const eventSubject = (name: string): string => `corral.ev.${name}`;
/** The live event subject of one sandbox: events once stored, republished by the stream with their seq in a header. */
export const liveSubject = (name: string): string => `corral.live.${name}`;

/** What a node can hold: the figures placement reads. */
export interface NodeCapacity {
  readonly memoryMib: number;
  readonly cpus: number;
  readonly sandboxes: number;
}

/** A node's entry in the registry, rewritten at every heartbeat and every create or stop. */
export interface NodeRecord {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly capacity: NodeCapacity;
  /** What is left: capacity minus the guest memory and count of its live sandboxes. */
  readonly free: { readonly memoryMib: number; readonly sandboxes: number };
  /** Live sandboxes on it now. */
  readonly sandboxes: number;
  /** How often it rewrites this entry. */
  readonly heartbeatMs: number;
  readonly startedAt: number;
  /** Drained: it takes no new sandboxes (placement passes it over). */
  readonly draining: boolean;
  /** Its sandboxes' workers answer the {@link WORKER_CALLS} themselves (absent: an older node). */
  readonly workerCalls?: boolean;
}

/** What draining a node did, per sandbox (see `Cluster.drain`). */
export interface DrainReport {
  readonly node: string;
  readonly sandboxes: readonly {
    readonly name: string;
    readonly ms: number;
    readonly stopReason: StopReason | null;
    /** Moved there (drain with `migrate`). */
    readonly movedTo?: string;
    readonly error?: SerializedError;
  }[];
}

/** A sandbox's entry in the catalog: which node runs it and how it is. */
export interface CatalogEntry {
  readonly name: string;
  readonly node: string;
  readonly status: SandboxStatus;
  readonly stopReason: StopReason | null;
  readonly image: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly memoryMib: number;
  readonly createdAt: number;
  readonly updatedAt: number;
}

/** A reply on the wire. */
export type Reply = { readonly result: unknown } | { readonly error: SerializedError };

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** JSON bytes of `v`, byte arrays as `{ $b64 }`. */
export function encode(v: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(toWire(v)));
}

/** Inverse of {@link encode}. */
export function decode<T>(data: Uint8Array): T {
  return fromWire(JSON.parse(decoder.decode(data))) as T;
}

/** The reply to a request that threw `err`. */
export function errorReply(err: unknown): Uint8Array {
  return encode({ error: serializeError(err) });
}

/** The result of a reply, or its error rebuilt (with its `code`) and thrown. */
export function unwrapReply<T>(data: Uint8Array): T {
  const r = decode<Reply>(data);
  if ('error' in r) throw deserializeError(r.error);
  return r.result as T;
}

/** The header the stream's republish puts each event's stream sequence in. */
export const SEQ_HEADER = 'Nats-Sequence';

/**
 * One event as the messages that carry it into the stream: one, or an output event whose data
 * would not fit one message (`maxPayload`, the server's) as several, same fields, data in order.
 */
export function eventMessages(e: SandboxEvent, maxPayload: number | undefined): Uint8Array[] {
  const max = Math.max(16 * 1024, Math.floor(((maxPayload ?? 1024 * 1024) - 4096) * 0.7)); // base64 JSON
  const data = (e as { data?: unknown }).data;
  if (!(data instanceof Uint8Array) || data.byteLength <= max) return [encode(e)];
  const parts: Uint8Array[] = [];
  for (let off = 0; off < data.byteLength; off += max) parts.push(encode({ ...e, data: data.subarray(off, off + max) }));
  return parts;
}
