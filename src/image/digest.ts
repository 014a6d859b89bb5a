/**
 * Content digests: hashing bytes and streams, and checking them. Every manifest and blob
 * corral takes from a registry is checked against its digest before it is used.
 */

import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { CorralError } from '../errors.ts';

/** `sha256:<hex>` of some bytes. */
export function sha256Digest(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** The hex part of a `sha256:<hex>` digest (for file names). */
export function digestHex(digest: string): string {
  return digest.slice(digest.indexOf(':') + 1);
}

/** Throws E_IMAGE_DIGEST unless `actual` equals `expected`. */
export function checkDigest(what: string, expected: string, actual: string): void {
  if (expected !== actual) {
    throw new CorralError('E_IMAGE_DIGEST', `${what}: digest mismatch (expected ${expected}, got ${actual})`, { details: { expected, actual } });
  }
}

/**
 * A pass-through stream that hashes and counts what flows through it and refuses more than
 * `maxBytes` (a registry cannot feed an endless blob).
 */
export class DigestTap extends Transform {
  readonly #hash: Hash = createHash('sha256');
  readonly #maxBytes: number;
  readonly #onBytes: ((bytes: number) => void) | undefined;
  bytes = 0;

  constructor(maxBytes = Number.MAX_SAFE_INTEGER, onBytes?: (bytes: number) => void) {
    super();
    this.#maxBytes = maxBytes;
    this.#onBytes = onBytes;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.#maxBytes) {
      cb(new CorralError('E_IMAGE_DIGEST', `more data than the ${this.#maxBytes} bytes the descriptor announced`));
      return;
    }
    this.#hash.update(chunk);
    this.#onBytes?.(this.bytes);
    cb(null, chunk);
  }

  /** `sha256:<hex>` of everything that went through (call once, after the end). */
  digest(): string {
    return `sha256:${this.#hash.digest('hex')}`;
  }
}
