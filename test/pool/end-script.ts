// Run as a plain Node process by test/pool/end.test.ts (never under vitest: a process that
// aborts must be seen as such). Starts pools whose workers host a sandbox actor (its event
// recorder opens the state dir's LMDB in the worker) and ends each at a different moment of
// its worker's start: before its thread runs, while it loads its modules (LMDB's native
// addon among them), after it opened the store. A worker ended while it loads or while its
// LMDB is open once aborted the process (FATAL ERROR napi_throw) or broke the store. Prints
// one JSON line; the test checks the exit code and that no worker had to be terminated.
// With `exit`, it closes no pool: the process ends while its workers start, as a script that
// forgets its supervisor does, and node tears them down.
//   node --import tsx test/pool/end-script.ts <stateDir> <pools> [close|exit]
import { MessageChannel } from 'node:worker_threads';
import { normalizeConfig } from '../../src/config.ts';
import { SandboxPool } from '../../src/pool/SandboxPool.ts';

const stateDir = process.argv[2]!;
const pools = Number(process.argv[3] ?? 8);
const close = process.argv[4] !== 'exit';
const limits = { replay: { maxEvents: 100, maxBytes: 1 << 20 }, logs: { maxEntries: 100, maxBytes: 1 << 20 } };
const lost: string[] = [];

async function startAndEnd(i: number): Promise<void> {
  const isolation = i % 2 === 0 ? 'shared' : 'worker';
  const pool = new SandboxPool({ workers: 1, isolation });
  const control = new MessageChannel();
  const data = {
    config: normalizeConfig({ name: `end-${process.pid}-${i}` }),
    stateDir,
    control: control.port2,
    records: { limits, written: new BigInt64Array(new SharedArrayBuffer(8)) },
  };
  pool.host(data, [control.port2], (err) => lost.push(err.message));
  if (!close) {
    control.port1.unref();
    return;
  }
  // The first ends before the thread runs at all; the others a few ms apart, spread over
  // the time a worker takes to load.
  if (i > 0) await new Promise((r) => setTimeout(r, i * 40));
  await pool.close();
  control.port1.close();
}

await Promise.all(Array.from({ length: pools }, (_, i) => startAndEnd(i)));
process.stdout.write(`${JSON.stringify({ pools, lost })}\n`);
