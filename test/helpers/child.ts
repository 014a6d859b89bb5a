/** Runs test/helpers/child-sandbox.ts in a child process and reads its first line. */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const CHILD = fileURLToPath(new URL('./child-sandbox.ts', import.meta.url));

export async function startChild(...args: string[]): Promise<{ child: ChildProcess; first: Record<string, unknown> }> {
  // node itself with tsx's loader: the tsx CLI would put a wrapper process in between.
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD, ...args], { stdio: ['ignore', 'pipe', 'inherit'], env: process.env });
  const line = await new Promise<string>((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d) => {
      buf += d;
      if (buf.includes('\n')) resolve(buf.split('\n')[0]!);
    });
    child.once('exit', (code) => reject(new Error(`child exited early (${code})`)));
  });
  return { child, first: JSON.parse(line) as Record<string, unknown> };
}
