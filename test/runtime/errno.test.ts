// "Not there" is an answer, any other failure is thrown (src/runtime/errno.ts), on real files.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ifMissing } from '../../src/runtime/errno.ts';
import { qcow2Backing } from '../../src/snapshot/templates.ts';

const dir = mkdtempSync(join(tmpdir(), 'corral-errno-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('ifMissing', () => {
  it('falls back for a missing path or a file used as a directory, and throws anything else', () => {
    writeFileSync(join(dir, 'file'), 'x');
    expect(ifMissing(() => readFileSync(join(dir, 'nope'), 'utf8'), 'none')).toBe('none');
    expect(ifMissing(() => readFileSync(join(dir, 'file', 'below'), 'utf8'), 'none')).toBe('none'); // ENOTDIR
    expect(ifMissing(() => readFileSync(join(dir, 'file'), 'utf8'), 'none')).toBe('x');
    expect(() => ifMissing(() => readFileSync(dir, 'utf8'), 'none')).toThrowError(expect.objectContaining({ code: 'EISDIR' }));
  });

  it('lets a template prune see an overlay it cannot read, instead of taking it for none', () => {
    expect(qcow2Backing(join(dir, 'no-overlay.qcow2'))).toBeUndefined();
    expect(() => qcow2Backing(dir)).toThrowError(expect.objectContaining({ code: 'EISDIR' }));
  });
});
