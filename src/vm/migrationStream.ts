/**
 * qemu 7.2's migration stream format, as far as corral writes it itself: the RAM section
 * (`ram`, version 4) and the framing around the device sections qemu saves.
 *
 * Why: a sandbox restored from a template runs on the template's RAM file mapped
 * copy-on-write, so everything it changed is in its private pages. A snapshot of it needs
 * those pages and the device state only; qemu 7.2 cannot save that (x-ignore-shared skips
 * shared blocks only, and a private mapping is no shared block), so corral writes the stream:
 * qemu's own device state (QMP `xen-save-devices-state`) after a RAM section holding the
 * private pages, and the template's other blocks (the BIOS ROM) as the template's stream has
 * them. A restore maps the same template file privately and loads the stream with the plain
 * `migrate-incoming`: qemu writes the pages it is given over the file's.
 *
 * The layout (migration/savevm.c, migration/ram.c):
 *
 *   be32 magic "QEVM", be32 version 3
 *   0x07 configuration: be32 length + machine name [subsections 0x05 …]
 *   0x01 section start: be32 id, u8 length + "ram", be32 instance, be32 version,
 *        be64 (total bytes | MEM_SIZE), then per block u8 length + name, be64 bytes
 *        [be64 guest address when x-ignore-shared is on], be64 EOS; footer 0x7e + be32 id
 *   0x02 section part / 0x03 section end: be32 id, page records, be64 EOS; footer
 *        a record: be64 (offset in block | flags) [u8 length + block name unless CONTINUE]
 *        then 4096 bytes (PAGE) or 1 fill byte (ZERO)
 *   0x04 full sections of the devices …, 0x00 end
 */

import { open } from 'node:fs/promises';
import { CorralError } from '../errors.ts';

const MAGIC = 0x5145564d;
const VERSION = 3;
const SECTION_START = 0x01;
const SECTION_PART = 0x02;
const SECTION_END = 0x03;
const SECTION_FULL = 0x04;
const SUBSECTION = 0x05;
const CONFIGURATION = 0x07;
const FOOTER = 0x7e;
const VM_EOF = 0x00;
const F_ZERO = 0x02;
const F_MEM_SIZE = 0x04;
const F_PAGE = 0x08;
const F_EOS = 0x10;
const F_CONTINUE = 0x20;
const FLAG_MASK = 0xfff;
/** The RAM section's version in qemu 7.2. */
const RAM_VERSION = 4;
/** The guest page size of x86 (TARGET_PAGE_SIZE). */
export const PAGE_BYTES = 4096;

/** One RAM block as a stream names it. */
export interface RamBlock {
  readonly name: string;
  readonly bytes: number;
}

/** One guest page of a block: its bytes, or a fill byte for a page of one value. */
export interface RamPage {
  readonly block: string;
  readonly offset: number;
  readonly data?: Buffer;
  readonly fill?: number;
}

/** What {@link readRamSection} found in a stream. */
export interface RamSection {
  /** The machine type of the configuration section (`microvm`). */
  readonly machine: string;
  readonly blocks: readonly RamBlock[];
  /** Every page record, in stream order. */
  readonly pages: readonly RamPage[];
  /** Where the sections after the RAM section begin (the devices'). */
  readonly devicesAt: number;
}

class Reader {
  at = 0;
  constructor(readonly buf: Buffer) {}
  need(n: number): void {
    if (this.at + n > this.buf.length) throw streamError(`truncated at byte ${this.at}`);
  }
  u8(): number {
    this.need(1);
    return this.buf[this.at++]!;
  }
  be32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.at);
    this.at += 4;
    return v;
  }
  be64(): bigint {
    this.need(8);
    const v = this.buf.readBigUInt64BE(this.at);
    this.at += 8;
    return v;
  }
  str8(): string {
    const n = this.u8();
    this.need(n);
    const s = this.buf.toString('latin1', this.at, this.at + n);
    this.at += n;
    return s;
  }
  bytes(n: number): Buffer {
    this.need(n);
    const b = this.buf.subarray(this.at, this.at + n);
    this.at += n;
    return b;
  }
}

function streamError(message: string): CorralError {
  return new CorralError('E_SNAPSHOT', `unexpected migration stream: ${message}`);
}

/**
 * Reads the header, configuration and RAM section of a stream qemu wrote (a template's
 * `state`, saved with x-ignore-shared, or one of {@link writeStream}'s), up to the first
 * device section. Page data are views into `buf`.
 */
export function readRamSection(buf: Buffer): RamSection {
  const r = new Reader(buf);
  if (r.be32() !== MAGIC) throw streamError('no QEVM magic');
  const version = r.be32();
  if (version !== VERSION) throw streamError(`version ${version}, not ${VERSION}`);
  if (r.u8() !== CONFIGURATION) throw streamError('no configuration section');
  const machine = r.bytes(r.be32()).toString('latin1');
  let ignoreShared = false;
  while (buf[r.at] === SUBSECTION) {
    r.at++;
    const name = r.str8();
    r.be32(); // the subsection's version
    if (name === 'configuration/capabilities') {
      const n = r.be32();
      for (let i = 0; i < n; i++) if (r.str8() === 'x-ignore-shared') ignoreShared = true;
    } else if (name === 'configuration/target-page-bits') {
      const bits = r.be32();
      if (2 ** bits !== PAGE_BYTES) throw streamError(`target page bits ${bits}`);
    } else {
      throw streamError(`configuration subsection ${name}`);
    }
  }
  const blocks: RamBlock[] = [];
  const pages: RamPage[] = [];
  let ramId: number | undefined;
  for (;;) {
    const at = r.at;
    const type = r.u8();
    if (type === SECTION_START) {
      const id = r.be32();
      const name = r.str8();
      r.be32(); // instance
      r.be32(); // version
      if (name !== 'ram') throw streamError(`section "${name}" before the RAM section ended`);
      ramId = id;
      const total = r.be64();
      if (!(total & BigInt(F_MEM_SIZE))) throw streamError('RAM section without its block list');
      let left = total & ~BigInt(FLAG_MASK);
      while (left > 0n) {
        const block = r.str8();
        const bytes = r.be64();
        if (ignoreShared) r.be64(); // the block's guest address
        blocks.push({ name: block, bytes: Number(bytes) });
        left -= bytes;
      }
      readPages(r, pages);
    } else if (type === SECTION_PART || type === SECTION_END) {
      if (r.be32() !== ramId) throw streamError(`a section part at byte ${at} that is not RAM's`);
      readPages(r, pages);
    } else if (type === SECTION_FULL || type === VM_EOF) {
      r.at = at;
      return { machine, blocks, pages, devicesAt: at };
    } else {
      throw streamError(`section type ${type} at byte ${at}`);
    }
    if (r.u8() !== FOOTER || r.be32() !== ramId) throw streamError(`no section footer before byte ${r.at}`);
  }
}

function readPages(r: Reader, pages: RamPage[]): void {
  let block = '';
  for (;;) {
    const word = r.be64();
    const flags = Number(word & BigInt(FLAG_MASK));
    if (flags & F_EOS) return;
    if (flags & F_MEM_SIZE) throw streamError('a second block list');
    if (!(flags & F_CONTINUE)) block = r.str8();
    const offset = Number(word & ~BigInt(FLAG_MASK));
    if (flags & F_ZERO) pages.push({ block, offset, fill: r.u8() });
    else if (flags & F_PAGE) pages.push({ block, offset, data: r.bytes(PAGE_BYTES) });
    else throw streamError(`page flags 0x${flags.toString(16)} (compression and xbzrle are never on here)`);
  }
}

/**
 * The device sections of a device-state file qemu wrote (`xen-save-devices-state`: magic,
 * version, full sections, end), without its header: they follow a RAM section as they are.
 */
export function deviceSections(buf: Buffer): Buffer {
  const r = new Reader(buf);
  if (r.be32() !== MAGIC || r.be32() !== VERSION) throw streamError('a device state without the QEVM header');
  if (buf[r.at] !== SECTION_FULL || buf[buf.length - 1] !== VM_EOF) throw streamError('a device state that is not full sections up to the end marker');
  return buf.subarray(r.at);
}

/** The pieces of one stream (see {@link writeStream}). */
export interface StreamParts {
  readonly machine: string;
  /** Every block the pages name, each with its length. */
  readonly blocks: readonly RamBlock[];
  /** Pages in any order; each block's pages are written together. */
  readonly pages: Iterable<RamPage>;
  /** The device sections and the end marker ({@link deviceSections}). */
  readonly devices: Buffer;
}

/** The RAM section's id in corral's streams (qemu's own saves number it 2 here too; any id works). */
const RAM_SECTION_ID = 2;

/**
 * A whole stream, in one buffer: configuration, the RAM section with the given blocks and
 * pages, then the devices. It loads with `migrate-incoming` and x-ignore-shared off; blocks
 * and pages it does not name keep what the restoring qemu has in them (a template file
 * mapped privately: the template's RAM).
 */
export function writeStream(parts: StreamParts): Buffer {
  return Buffer.concat([streamStart(parts.machine, parts.blocks), streamPart(parts.blocks, parts.pages), streamEnd(parts.devices)]);
}

/** The stream's header, configuration and the RAM section's start (its block list). */
export function streamStart(machine: string, blocks: readonly RamBlock[]): Buffer {
  const w = new Writer(8 + 5 + machine.length + 17 + 8 + blocks.reduce((n, b) => n + 1 + b.name.length + 8, 0) + 8 + 5);
  w.be32(MAGIC);
  w.be32(VERSION);
  w.u8(CONFIGURATION);
  w.be32(machine.length);
  w.str(machine);
  w.section(SECTION_START);
  w.be64(blocks.reduce((n, b) => n + BigInt(b.bytes), 0n) | BigInt(F_MEM_SIZE));
  for (const b of blocks) {
    w.name8(b.name);
    w.be64(BigInt(b.bytes));
  }
  w.end();
  return w.done();
}

/** One part of the RAM section: `pages`, each block's together (a stream may have any number of parts). */
export function streamPart(blocks: readonly RamBlock[], pages: Iterable<RamPage>): Buffer {
  const known = new Map(blocks.map((b) => [b.name, b.bytes]));
  const byBlock = new Map<string, RamPage[]>();
  let bytes = 5 + 8 + 5;
  for (const p of pages) {
    const size = known.get(p.block);
    if (size === undefined || p.offset % PAGE_BYTES !== 0 || p.offset + PAGE_BYTES > size) throw streamError(`page at ${p.offset} of block "${p.block}" is outside the blocks listed`);
    if (p.data && p.data.length !== PAGE_BYTES) throw streamError(`a page of ${p.data.length} bytes`);
    let list = byBlock.get(p.block);
    if (!list) {
      byBlock.set(p.block, (list = []));
      bytes += 1 + p.block.length;
    }
    list.push(p);
    bytes += 8 + (p.data ? PAGE_BYTES : 1);
  }
  const w = new Writer(bytes);
  w.section(SECTION_PART);
  for (const [block, list] of byBlock) {
    list.forEach((p, i) => {
      w.be64(BigInt(p.offset) | BigInt((p.data ? F_PAGE : F_ZERO) | (i > 0 ? F_CONTINUE : 0)));
      if (i === 0) w.name8(block);
      if (p.data) w.copy(p.data);
      else w.u8(p.fill ?? 0);
    });
  }
  w.end();
  return w.done();
}

/** The RAM section's end, then the device sections and the stream's end marker. */
export function streamEnd(devices: Buffer): Buffer {
  const w = new Writer(5 + 8 + 5 + devices.length);
  w.section(SECTION_END);
  w.end();
  w.copy(devices);
  return w.done();
}

/** Writes into a buffer of a size known in advance. */
class Writer {
  readonly #buf: Buffer;
  #at = 0;
  constructor(size: number) {
    this.#buf = Buffer.allocUnsafe(size);
  }
  u8(v: number): void {
    this.#at = this.#buf.writeUInt8(v, this.#at);
  }
  be32(v: number): void {
    this.#at = this.#buf.writeUInt32BE(v, this.#at);
  }
  be64(v: bigint): void {
    this.#at = this.#buf.writeBigUInt64BE(v, this.#at);
  }
  str(s: string): void {
    this.#at += this.#buf.write(s, this.#at, 'latin1');
  }
  name8(s: string): void {
    this.u8(s.length);
    this.str(s);
  }
  copy(b: Buffer): void {
    this.#at += b.copy(this.#buf, this.#at);
  }
  /** A RAM section's header (the start's names the section). */
  section(type: number): void {
    this.u8(type);
    this.be32(RAM_SECTION_ID);
    if (type === SECTION_START) {
      this.name8('ram');
      this.be32(0);
      this.be32(RAM_VERSION);
    }
  }
  /** A section's end of pages and its footer. */
  end(): void {
    this.be64(BigInt(F_EOS));
    this.u8(FOOTER);
    this.be32(RAM_SECTION_ID);
  }
  done(): Buffer {
    if (this.#at !== this.#buf.length) throw new Error(`migration stream writer: wrote ${this.#at} of ${this.#buf.length} bytes`);
    return this.#buf;
  }
}

/** Pages of the template file read and written per part when flattening. */
const FLATTEN_CHUNK_PAGES = 256;

/**
 * Writes `delta` (a stream of {@link writeStream}'s, over the RAM file `memFile`) to `out`
 * as a stream that holds the whole RAM, for a qemu whose RAM starts zeroed: every page of
 * the file that is not zero, the delta's own pages over them. Returns the bytes written.
 */
export async function flattenDelta(delta: Buffer, memFile: string, out: string): Promise<number> {
  const ram = readRamSection(delta);
  const fileBlock = ram.blocks.find((b) => b.name === 'mem');
  if (!fileBlock) throw streamError('a delta stream without the RAM block "mem"');
  const changed = new Map<number, RamPage>();
  for (const p of ram.pages) if (p.block === 'mem') changed.set(p.offset, p);
  const src = await open(memFile, 'r');
  const dst = await open(out, 'w', 0o600);
  let written = 0;
  const put = async (b: Buffer) => {
    await dst.write(b);
    written += b.length;
  };
  try {
    await put(streamStart(ram.machine, ram.blocks));
    await put(streamPart(ram.blocks, ram.pages.filter((p) => p.block !== 'mem')));
    const chunk = Buffer.alloc(FLATTEN_CHUNK_PAGES * PAGE_BYTES);
    for (let off = 0; off < fileBlock.bytes; off += chunk.length) {
      const len = Math.min(chunk.length, fileBlock.bytes - off);
      // A file shorter than the block reads as zeros past its end, as qemu maps it.
      chunk.fill(0);
      for (let got = 0; got < len; ) {
        const { bytesRead } = await src.read(chunk, got, len - got, off + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      const pages: RamPage[] = [];
      for (let p = 0; p < len / PAGE_BYTES; p++) {
        const offset = off + p * PAGE_BYTES;
        const mine = changed.get(offset);
        if (mine) pages.push(mine);
        else {
          const data = chunk.subarray(p * PAGE_BYTES, (p + 1) * PAGE_BYTES);
          if (!isZero(data)) pages.push({ block: 'mem', offset, data });
        }
      }
      if (pages.length) await put(streamPart(ram.blocks, pages));
    }
    await put(streamEnd(delta.subarray(ram.devicesAt)));
  } finally {
    await Promise.all([src.close(), dst.close()]);
  }
  return written;
}

const ZERO_PAGE = Buffer.alloc(PAGE_BYTES);

function isZero(b: Buffer): boolean {
  return b.equals(ZERO_PAGE);
}
