/** Runs the `corral` CLI (bin/corral.mjs) as a script would: a fresh process, `--json`. */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const BIN = fileURLToPath(new URL('../../bin/corral.mjs', import.meta.url));

/** Exit code, stdout parsed as JSON (`{ raw }` if it is not), stderr. */
export function corral(...args: string[]): Promise<{ code: number; json: any; stderr: string }> {
  return corralWith(undefined, ...args);
}

/** {@link corral} with `input` piped to its stdin (then EOF). */
export function corralWith(input: string | undefined, ...args: string[]): Promise<{ code: number; json: any; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [BIN, '--json', ...args], { env: process.env, timeout: 120_000 }, (err, stdout, stderr) => {
      const code = err ? ((err as { code?: number }).code ?? 1) : 0;
      let json: unknown;
      try {
        json = stdout.trim() ? JSON.parse(stdout) : undefined;
      } catch {
        json = { raw: stdout };
      }
      resolve({ code: typeof code === 'number' ? code : 1, json, stderr });
    });
    if (input !== undefined) child.stdin!.end(input);
  });
}

/** A command printing JSON Lines (`logs -f --json`): exit code and the parsed lines, once it exits. */
export function corralLines(...args: string[]): Promise<{ code: number; lines: any[] }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, '--json', ...args], { env: process.env, timeout: 120_000 }, (err, stdout) => {
      const code = err ? ((err as { code?: number }).code ?? 1) : 0;
      resolve({ code: typeof code === 'number' ? code : 1, lines: stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l)) });
    });
  });
}
