/**
 * The ops of a SETUP frame (native/agent/PROTOCOL.md, "Guest setup") and their encoding:
 * what the host asks the agent to do to a freshly booted or restored guest before any user
 * code runs. Ops are packed into as few frames as the 1 MiB payload limit allows; a file
 * larger than one frame is split into a write and appends.
 */

import { MAX_PAYLOAD, PayloadWriter } from './frame.ts';

/** One thing the agent does to the guest. Paths are absolute guest paths. */
export type SetupOp =
  | { readonly op: 'mkdir'; readonly path: string; readonly mode: number }
  | { readonly op: 'write'; readonly path: string; readonly mode: number; readonly append?: boolean; readonly data: Uint8Array }
  | { readonly op: 'symlink'; readonly target: string; readonly path: string }
  | { readonly op: 'remove'; readonly path: string }
  | { readonly op: 'mount9p'; readonly tag: string; readonly path: string; readonly readonly: boolean }
  | { readonly op: 'mountTmpfs'; readonly path: string; readonly sizeMib: number }
  | { readonly op: 'net'; readonly ifname: string; readonly address: string; readonly prefix: number; readonly gateway: string }
  | { readonly op: 'umount'; readonly path: string };

const OP_CODE = { mkdir: 1, write: 2, symlink: 3, remove: 4, mount9p: 5, mountTmpfs: 6, net: 7, umount: 8 } as const;

/** One SETUP frame's payload, and which input op each of its ops came from. */
export interface SetupFrame {
  readonly payload: Buffer;
  /** sources[i] = index in the input list of the frame's i-th op. */
  readonly sources: readonly number[];
}

/** Room per frame: the payload limit minus the op count and some slack for headers. */
const BUDGET = MAX_PAYLOAD - 4096;

function ipv4(s: string): number {
  const parts = s.split('.').map(Number);
  return ((parts[0]! << 24) | (parts[1]! << 16) | (parts[2]! << 8) | parts[3]!) >>> 0;
}

function encodeOp(op: SetupOp): Buffer {
  const w = new PayloadWriter().u32(OP_CODE[op.op]);
  switch (op.op) {
    case 'mkdir':
      return w.str(op.path).u32(op.mode).finish();
    case 'write':
      return w.str(op.path).u32(op.mode).u32(op.append ? 1 : 0).bytes(op.data).finish();
    case 'symlink':
      return w.str(op.target).str(op.path).finish();
    case 'remove':
      return w.str(op.path).finish();
    case 'mount9p':
      return w.str(op.tag).str(op.path).u32(op.readonly ? 1 : 0).finish();
    case 'mountTmpfs':
      return w.str(op.path).u32(op.sizeMib).finish();
    case 'net':
      return w.str(op.ifname).u32(ipv4(op.address)).u32(op.prefix).u32(ipv4(op.gateway)).finish();
    case 'umount':
      return w.str(op.path).finish();
  }
}

/** Splits large writes so that each op fits one frame. */
function splitWrites(ops: readonly SetupOp[]): { op: SetupOp; source: number }[] {
  const out: { op: SetupOp; source: number }[] = [];
  const chunk = BUDGET - 8192;
  ops.forEach((op, source) => {
    if (op.op !== 'write' || op.data.length <= chunk) {
      out.push({ op, source });
      return;
    }
    for (let off = 0; off < op.data.length; off += chunk) {
      out.push({ op: { ...op, append: off > 0 ? true : op.append ?? false, data: op.data.subarray(off, off + chunk) }, source });
    }
  });
  return out;
}

/**
 * Encodes ops into SETUP payloads, in order.
 *
 * @example
 * for (const f of encodeSetup([{ op: 'mkdir', path: '/srv', mode: 0o755 }])) await agent.setup(f.payload);
 */
export function encodeSetup(ops: readonly SetupOp[]): SetupFrame[] {
  const frames: SetupFrame[] = [];
  let parts: Buffer[] = [];
  let sources: number[] = [];
  let size = 0;
  const flush = () => {
    if (parts.length === 0) return;
    frames.push({ payload: Buffer.concat([new PayloadWriter().u32(parts.length).finish(), ...parts]), sources });
    parts = [];
    sources = [];
    size = 0;
  };
  for (const { op, source } of splitWrites(ops)) {
    const b = encodeOp(op);
    if (size + b.length > BUDGET || parts.length >= 4096) flush();
    parts.push(b);
    sources.push(source);
    size += b.length;
  }
  flush();
  return frames;
}

/** A short description of an op for error messages ("write /etc/app.conf"). */
export function describeOp(op: SetupOp): string {
  switch (op.op) {
    case 'symlink':
      return `symlink ${op.path} -> ${op.target}`;
    case 'mount9p':
      return `volume ${op.path}`;
    case 'mountTmpfs':
      return `tmpfs ${op.path}`;
    case 'net':
      return `network ${op.ifname}`;
    case 'umount':
      return `volume ${op.path}`;
    default:
      return `${op.op} ${op.path}`;
  }
}
