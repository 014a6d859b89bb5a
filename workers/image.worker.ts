/**
 * The image pool's worker (piscina): the CPU-heavy part of a pull — decompress, check,
 * extract and build the erofs layer image of one layer. It never imports the pool.
 */

import { serializeError } from '../src/errors.ts';
import { unpackLayer, type UnpackResult, type UnpackTask } from '../src/image/unpackLayer.ts';

/** Errors cross the thread boundary as plain data with their code. */
export type UnpackOutcome = { ok: true; result: UnpackResult } | { ok: false; error: ReturnType<typeof serializeError> };

export default async function run(task: UnpackTask): Promise<UnpackOutcome> {
  try {
    return { ok: true, result: await unpackLayer(task) };
  } catch (err) {
    return { ok: false, error: serializeError(err) };
  }
}
