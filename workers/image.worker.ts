/**
 * The image pool's worker (piscina): the CPU-heavy part of a pull — decompress, check,
 * extract and build the erofs layer image of one layer, or the squashed image of several
 * (src/image/squash.ts). It never imports the pool.
 */

import { serializeError } from '../src/errors.ts';
import type { UnpackOutcome } from '../src/image/pool.ts';
import { squashLayers, type SquashTask } from '../src/image/squash.ts';
import { unpackLayer, type UnpackTask } from '../src/image/unpackLayer.ts';

export default async function run(task: UnpackTask | SquashTask): Promise<UnpackOutcome> {
  try {
    return { ok: true, result: 'kind' in task && task.kind === 'squash' ? await squashLayers(task) : await unpackLayer(task as UnpackTask) };
  } catch (err) {
    return { ok: false, error: serializeError(err) };
  }
}
