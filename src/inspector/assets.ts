/**
 * The inspector page's files (HTML, JS, CSS), shipped in this repository under
 * `src/inspector/public/`: the page needs nothing from outside the server that serves it.
 */

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ROOT } from '../runtime/dist.ts';

// From the repository's root: in the precompiled runtime this module's URL is the bundle's.
const PUBLIC = `${join(ROOT, 'src', 'inspector', 'public')}/`;

const FILES: Readonly<Record<string, { file: string; type: string }>> = {
  '/ui': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/ui/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/ui/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/ui/app.css': { file: 'app.css', type: 'text/css; charset=utf-8' },
};

/**
 * The inspector file served at `path`, or undefined when there is none.
 *
 * @example
 * const asset = await inspectorAsset('/ui/app.js'); // { body, type }
 */
export async function inspectorAsset(path: string): Promise<{ body: Buffer; type: string } | undefined> {
  const f = FILES[path];
  if (!f) return undefined;
  return { body: await readFile(PUBLIC + f.file), type: f.type };
}
