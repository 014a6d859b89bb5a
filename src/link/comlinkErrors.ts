/**
 * Comlink drops an error's `code` and `cause` when it crosses a thread; corral's callers
 * branch on `code`. This swaps Comlink's built-in "throw" handler for one that carries the
 * whole {@link SerializedError}. Import it once in each thread (the supervisor and the worker).
 */

import { transferHandlers, type TransferHandler } from 'comlink';
import { deserializeError, serializeError, type SerializedError } from '../errors.ts';

type Thrown = { isError: true; value: SerializedError } | { isError: false; value: unknown };

const builtin = transferHandlers.get('throw') as TransferHandler<{ value: unknown }, Thrown>;

transferHandlers.set('throw', {
  canHandle: builtin.canHandle,
  serialize({ value }: { value: unknown }): [Thrown, Transferable[]] {
    return [value instanceof Error ? { isError: true, value: serializeError(value) } : { isError: false, value }, []];
  },
  deserialize(serialized: Thrown): never {
    if (serialized.isError) throw deserializeError(serialized.value);
    throw serialized.value;
  },
} as TransferHandler<unknown, Thrown>);
