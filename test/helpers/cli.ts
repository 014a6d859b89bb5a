/** Runs the `corral` CLI (bin/corral.mjs) as a script would: a fresh process, `--json`. */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const BIN = fileURLToPath(new URL('../../bin/corral.mjs', import.meta.url));

/** Exit code, stdout parsed as JSON (`{ raw }` if it is not), stderr. */
export function corral(...args: string[]): Promise<{ code: number; json: any; stderr: string }> {
  return corralWith(undefined, ...args);
}

/** {@link corral} with an environment of its own (credentials, files) instead of this process's. */
export function corralEnv(env: NodeJS.ProcessEnv, ...args: string[]): Promise<{ code: number; json: any; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, '--json', ...args], { env, timeout: 120_000 }, (err, stdout, stderr) => {
      const code = err ? ((err as { code?: number }).code ?? 1) : 0;
      resolve({ code: typeof code === 'number' ? code : 1, json: stdout.trim() ? JSON.parse(stdout) : undefined, stderr });
    });
  });
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

/** A `corral` process left running without --json (`attach`): its output as it comes, and its exit. */
export interface LiveCorral {
  readonly child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves once stdout holds `text` (rejects if the process exits first). */
  until(text: string): Promise<void>;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts `corral <args>` (no --json, stdin /dev/null unless `stdin: 'pipe'`). */
export function corralLive(args: string[], options: { stdin?: 'ignore' | 'pipe' } = {}): LiveCorral {
  const child = spawn(process.execPath, [BIN, ...args], { env: process.env, stdio: [options.stdin ?? 'ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const waiters = new Set<() => void>();
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    for (const w of waiters) w();
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    until: (text) =>
      new Promise<void>((resolve, reject) => {
        const check = () => {
          if (!out.includes(text)) return;
          waiters.delete(check);
          resolve();
        };
        waiters.add(check);
        check();
        void exited.then((e) => {
          waiters.delete(check);
          reject(new Error(`corral ${args[0]} exited (${JSON.stringify(e)}) before printing ${JSON.stringify(text)}; stdout ${JSON.stringify(out)}, stderr ${JSON.stringify(err)}`));
        });
      }),
  };
}

/** `corral` without --json: exit code and the raw output. */
export function plainCorral(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) =>
    execFile(process.execPath, [BIN, ...args], { env: process.env, timeout: 120_000 }, (err, stdout, stderr) => {
      const code = err ? (err as { code?: unknown }).code : 0;
      resolve({ code: typeof code === 'number' ? code : 1, stdout, stderr });
    }),
  );
}

/** A running `corral fs watch`, its stdout lines and stderr collected, with waits on them. */
export function watcher(...args: string[]) {
  const child: ChildProcess = spawn(process.execPath, [BIN, ...args], { env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const changed: Array<() => void> = [];
  child.stdout!.on('data', (d: Buffer) => ((out += d), changed.splice(0).forEach((f) => f())));
  child.stderr!.on('data', (d: Buffer) => ((err += d), changed.splice(0).forEach((f) => f())));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return {
    child,
    exited,
    get out() {
      return out;
    },
    get err() {
      return err;
    },
    /** Resolves once `pred` holds (the test timeout bounds it); rejects if the process exits first. */
    async until(pred: () => boolean): Promise<void> {
      while (!pred()) {
        if (child.exitCode !== null) throw new Error(`corral fs watch exited ${child.exitCode}: ${err}`);
        await Promise.race([new Promise<void>((r) => changed.push(r)), exited]);
      }
    },
  };
}
