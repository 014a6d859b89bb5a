/**
 * The control-socket protocol of a detached sandbox's host process: JSON lines.
 *
 *   client → host  { id, method, args }           a SandboxWorkerApi call, or "subscribe"
 *   host → client  { id, result } | { id, error }  its answer (errors keep name/code/message)
 *   host → client  { event }                       a sandbox event (after "subscribe")
 *
 * Bytes (stdin, stdout chunks) travel as `{ "$b64": "…" }`.
 */

import { connect } from 'node:net';
import type { SerializedError } from '../errors.ts';
import type { SandboxEvent } from '../bus/events.ts';

export type WireRequest = { id: number; method: string; args: unknown[] };
export type WireMessage =
  | { id: number; result: unknown }
  | { id: number; error: SerializedError }
  | { event: SandboxEvent };

/** Longest line either side accepts (a 1 MiB output chunk is ~1.4 MB in base64). */
/**
 * The sandbox API calls a detached host process forwards to its sandbox (besides `start`,
 * which the host makes itself): SocketLink sends only these, hostMain accepts only these.
 */
export const FORWARDED_CALLS = ['exec', 'writeStdin', 'closeStdin', 'signalExec', 'resizeExec', 'ackOutput', 'fs', 'watchStart', 'watchStop', 'execs', 'publish', 'unpublish', 'pause', 'resume', 'setMaxDuration', 'drain', 'stop', 'kill', 'info', 'stopped', 'ping', 'probe', 'snapshot', 'blockStats', 'networkStats'] as const;

export const MAX_LINE = 4 * 1024 * 1024;

/** Deep-copies `v`, turning byte arrays into `{ $b64 }`. */
export function toWire(v: unknown): unknown {
  if (v instanceof Uint8Array) return { $b64: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64') };
  if (Array.isArray(v)) return v.map(toWire);
  if (v && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = toWire(x);
    return out;
  }
  return v;
}

/** Inverse of {@link toWire}. */
export function fromWire(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(fromWire);
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    if (typeof o.$b64 === 'string' && Object.keys(o).length === 1) return new Uint8Array(Buffer.from(o.$b64, 'base64'));
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(o)) out[k] = fromWire(x);
    return out;
  }
  return v;
}

/** Splits a byte stream into lines, bounded by MAX_LINE. */
export class LineSplitter {
  #buf = '';
  push(chunk: string): string[] {
    this.#buf += chunk;
    if (this.#buf.length > MAX_LINE && !this.#buf.includes('\n')) throw new Error('control line too long');
    const lines = this.#buf.split('\n');
    this.#buf = lines.pop() ?? '';
    return lines.filter((l) => l.length > 0);
  }
}

/** The control socket path of a detached sandbox, short enough for sun_path (108 bytes). */
export function controlSocketPath(stateDir: string, name: string): string {
  return `${stateDir}/run/${name}.sock`;
}

/** Whether something accepts connections on a unix socket (a connection closed unused at once, or after 1 s). */
export function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    const done = (v: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => done(false), 1000);
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}
