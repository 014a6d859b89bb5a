// When the process that owns attached sandboxes ends — normally or by SIGKILL — no qemu
// process, socket or run dir of corral is left behind.
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { alive, until } from '../helpers/sandbox.ts';

const CHILD = fileURLToPath(new URL('../helpers/child-sandbox.ts', import.meta.url));


function runDirs(): string[] {
  return readdirSync(tmpdir()).filter((f) => f.startsWith('corral-run-'));
}

async function startChild(mode: 'exit' | 'hang') {
  // node itself with tsx's loader: the tsx CLI would put a wrapper process in between.
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD, mode], { stdio: ['ignore', 'pipe', 'inherit'], env: process.env });
  const line = await new Promise<string>((resolve, reject) => {
    let buf = '';
    child.stdout.on('data', (d) => {
      buf += d;
      if (buf.includes('\n')) resolve(buf.split('\n')[0]!);
    });
    child.once('exit', (code) => reject(new Error(`child exited early (${code})`)));
  });
  const { vmPid } = JSON.parse(line) as { vmPid: number };
  return { child, vmPid };
}

describe('cleanup when the owning process ends', () => {
  it('leaves no qemu when the process exits without stopping its sandbox', async () => {
    const before = runDirs();
    const { child, vmPid } = await startChild('exit');
    expect(alive(vmPid)).toBe(true);
    await new Promise((r) => child.once('exit', r));
    await until(() => !alive(vmPid), 10_000, `qemu ${vmPid} to go`);
    expect(runDirs().filter((d) => !before.includes(d))).toEqual([]);
  });

  it('leaves no qemu when the process is SIGKILLed', async () => {
    const before = runDirs();
    const { child, vmPid } = await startChild('hang');
    expect(alive(vmPid)).toBe(true);
    child.kill('SIGKILL');
    await until(() => !alive(vmPid), 10_000, `qemu ${vmPid} to go`);
    expect(runDirs().filter((d) => !before.includes(d))).toEqual([]);
  });
});
