/**
 * The image's default command, `docker run` style: the config's `Entrypoint` followed by
 * either the caller's arguments or, when there are none, the config's `Cmd`. An entrypoint
 * given by the caller replaces the image's and drops its `Cmd` (as `docker run
 * --entrypoint` does), so `{ entrypoint: ['/bin/sh'] }` alone runs a bare shell.
 *
 * The request is plain data: it crosses to the sandbox worker (or a detached host
 * process), which resolves it against the defaults of the image the sandbox booted from.
 */

import { CorralError } from '../errors.ts';
import type { ImageDefaults } from './manifest.ts';

/** What to run of the image: see the module comment. */
export interface ImageCommandRequest {
  /** Arguments after the entrypoint; none (or empty): the image's `Cmd`. */
  readonly args?: readonly string[];
  /** Replaces the image's `Entrypoint` and drops its `Cmd`; `[]` clears the entrypoint. */
  readonly entrypoint?: readonly string[];
}

function strings(v: unknown, option: string): readonly string[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.some((s) => typeof s !== 'string')) {
    throw new CorralError('E_INVALID_OPTION', `invalid option ${option}: an array of strings (got ${JSON.stringify(v)})`);
  }
  return v as string[];
}

/**
 * Checks a request from the caller (arrays of strings only) and returns it as plain data.
 *
 * @example
 * imageCommandRequest(['-c', 'print(1)'], undefined); // { args: ['-c', 'print(1)'] }
 */
export function imageCommandRequest(args: unknown, entrypoint: unknown): ImageCommandRequest {
  const a = strings(args, 'args');
  const e = strings(entrypoint, 'entrypoint');
  return { ...(a ? { args: [...a] } : {}), ...(e ? { entrypoint: [...e] } : {}) };
}

/**
 * The argv to run: entrypoint + (args, or the image's Cmd). Throws E_NO_COMMAND, naming the
 * image, when that is empty.
 *
 * @example
 * imageArgv({ entrypoint: ['python3'], cmd: ['-V'] }, {}, 'py');              // ['python3', '-V']
 * imageArgv({ entrypoint: ['python3'], cmd: ['-V'] }, { args: ['x.py'] }, 'py'); // ['python3', 'x.py']
 */
export function imageArgv(defaults: Pick<ImageDefaults, 'entrypoint' | 'cmd'>, req: ImageCommandRequest, image: string): string[] {
  const overridden = req.entrypoint !== undefined;
  const entrypoint = overridden ? req.entrypoint! : defaults.entrypoint;
  const args = req.args && req.args.length > 0 ? req.args : overridden ? [] : defaults.cmd;
  const argv = [...entrypoint, ...args];
  if (argv.length === 0) {
    throw new CorralError(
      'E_NO_COMMAND',
      `image ${image} has no entrypoint or cmd${overridden ? ' (and the entrypoint was overridden with an empty one)' : ''}: give the command to run (run(args), corral run IMAGE -- CMD…)`,
      { details: { image } },
    );
  }
  return argv;
}
