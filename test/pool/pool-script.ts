// Run as a plain Node process by test/pool/pool.test.ts (never under vitest, whose runner
// keeps the event loop alive). argv[2] is the isolation, argv[3] the pool size. Creates
// three sandboxes, runs an exec in each at once, prints one JSON line of facts, stops them
// and ends WITHOUT closing the supervisor: the idle pool must not hold the process.
import { Sandbox, Supervisor } from '../../src/index.ts';

const isolation = process.argv[2] as 'shared' | 'worker';
const sup = new Supervisor({ stateDir: process.env.CORRAL_STATE_DIR!, isolation, workers: Number(process.argv[3]) });
const names = [0, 1, 2].map((i) => `pool-${isolation}-${process.pid}-${i}`);
const sbs: Sandbox[] = [];
for (const n of names) sbs.push(await Sandbox.builder(n).supervisor(sup).create());
const outs = await Promise.all(sbs.map((s, i) => s.exec('sh', ['-c', `echo ${i}; hostname`])));
const threads = new Set(names.map((n) => sup.get(n)!.threadId));
process.stdout.write(
  `${JSON.stringify({ outs: outs.map((o) => o.stdout), threads: threads.size, workers: sup.pool.workerCount, loads: sup.pool.loads })}\n`,
);
await Promise.all(sbs.map((s) => s.stop()));
for (const n of names) await Sandbox.remove(n, { supervisor: sup });
