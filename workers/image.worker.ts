/**
 * The image pool's worker (piscina): the squashed image of several layers (src/image/squash.ts:
 * decompress, check, extract and merge them, mkfs.erofs). It never imports the pool.
 */

import { serializeError } from '../src/errors.ts';
import type { UnpackOutcome } from '../src/image/pool.ts';
import { squashLayers, type SquashTask } from '../src/image/squash.ts';

export default async function run(task: SquashTask): Promise<UnpackOutcome> {
  try {
    return { ok: true, result: await squashLayers(task) };
  } catch (err) {
    return { ok: false, error: serializeError(err) };
  }
}
