/**
 * One writer of the LMDB concurrency test (test/store/concurrency.test.ts): a process (and,
 * inside it, worker threads) that owns some sandbox names and writes to the state dir the way
 * the runtime does, through the runtime's own classes: the record (Store.putSandbox, then
 * patchSandbox per state event, as Supervisor#onEvent does), every event in the replay log,
 * exec output in the exec log; the worker threads also touch the image index and the
 * templates index (ImageIndex, listTemplates), as sandbox and image workers do. Between
 * writes it reads what the other writers left (records, replay logs) and validates it.
 *
 * argv: stateDir id seed names events threads life. Prints `tick` lines on stdout (the test kills
 * this process after a seeded number of them) and `done` at the end; exits 1 on any invalid
 * read or failed write.
 */
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import type { SandboxEvent } from '../../../src/bus/events.ts';
import { normalizeConfig } from '../../../src/config.ts';
import { EventRecorder } from '../../../src/events/EventRecorder.ts';
import { ReplayLog, replayLimits } from '../../../src/events/ReplayLog.ts';
import { ImageIndex } from '../../../src/image/ImageIndex.ts';
import { execLogLimits } from '../../../src/logs/ExecLog.ts';
import { listTemplates } from '../../../src/snapshot/templates.ts';
import { Store } from '../../../src/store/Store.ts';
import { prng } from '../../helpers/prng.ts';
import { validateRecord, validateReplay } from './storeChecks.ts';

interface Job {
  readonly stateDir: string;
  readonly id: string;
  readonly seed: number;
  readonly names: number;
  readonly events: number;
  readonly threads: number;
  /** Which life of these names this is (0 first, then 1 for the writer that takes over…). */
  readonly life: number;
}

const enc = new TextEncoder();

async function run(job: Job, tick: () => void): Promise<void> {
  const rand = prng(job.seed);
  const store = Store.open(job.stateDir);
  const limits = { replay: replayLimits(), logs: execLogLimits() };
  const replay = new ReplayLog(store);
  const names = Array.from({ length: job.names }, (_, i) => `${job.id}-${i}`);
  const now = Date.now();
  for (const name of names) {
    const prev = store.getSandbox(name);
    await store.putSandbox({
      name,
      config: prev?.config ?? normalizeConfig({ name }),
      status: 'creating',
      state: 'creating',
      ownerPid: process.pid,
      vmPid: null,
      stopReason: null,
      controlSocket: null,
      createdAt: prev?.createdAt ?? now,
      updatedAt: now,
    });
  }
  const seq = new Map(names.map((n) => [n, 0]));
  const execs = new Map(names.map((n) => [n, { execId: job.life * 10_000 + 1, chunk: 0 }]));
  const pending: Array<Promise<unknown>> = [];
  const recorders = new Map<string, EventRecorder>();
  for (let i = 0; i < job.events; i++) {
    const name = names[Math.floor(rand() * names.length)]!;
    const s = seq.get(name)! + 1;
    seq.set(name, s);
    const x = execs.get(name)!;
    const r = rand();
    let e: SandboxEvent;
    if (s === 1 || r < 0.1) {
      e = { type: 'sandbox.state', name, seq: s, ts: Date.now(), status: 'running', state: 'running' } as SandboxEvent;
    } else {
      if (r < 0.15) x.execId++, (x.chunk = 0);
      x.chunk++;
      e = { type: r < 0.6 ? 'exec.stdout' : 'exec.stderr', name, seq: s, ts: Date.now(), execId: x.execId, data: enc.encode(`${name} exec ${x.execId} chunk ${x.chunk}\n`) } as SandboxEvent;
    }
    // What Supervisor#onEvent does with each event, and the sandbox's worker (its recorder).
    if (e.type === 'sandbox.state') pending.push(store.patchSandbox(name, { status: 'running', state: 'running' }));
    let recorder = recorders.get(name);
    if (!recorder) recorders.set(name, (recorder = new EventRecorder(store, name, limits)));
    recorder.record(e);
    pending.push(recorder.flushed());
    if (i % 25 === 24) {
      await Promise.all(pending.splice(0));
      for (const rec of store.listSandboxes()) validateRecord(rec.name, rec);
      const other = store.listSandboxes()[Math.floor(rand() * store.listSandboxes().length)];
      if (other) validateReplay(other.name, replay.read(other.name, 0).events.map((ev) => [ev.seq, ev]));
      tick();
    }
    // Some turns end here, so writes land in different batches and event-loop turns.
    if (rand() < 0.2) await new Promise((res) => setImmediate(res));
  }
  await Promise.all(pending);
  for (const name of names) await store.patchSandbox(name, { status: 'stopped', state: 'stopped', stopReason: 'requested' });
  await store.close();
}

/** A worker thread's extra: the image and template indexes, opened per call as the image workers do. */
async function touchIndexes(stateDir: string, id: string): Promise<void> {
  const idx = ImageIndex.open(stateDir);
  await idx.putLayer({ diffId: `sha256:${Buffer.from(id).toString("hex").padEnd(64, "0").slice(0, 64)}`, imageBytes: 1, tarBytes: 1, createdAt: Date.now() });
  await listTemplates(stateDir);
  idx.listImages();
}

if (isMainThread) {
  const [stateDir, id, seed, names, events, threads, life] = process.argv.slice(2);
  const job: Job = { stateDir: stateDir!, id: id!, seed: Number(seed), names: Number(names), events: Number(events), threads: Number(threads), life: Number(life ?? 0) };
  const tick = () => process.stdout.write('tick\n');
  const boot = fileURLToPath(new URL('../../../workers/boot.mjs', import.meta.url));
  const workers = Array.from({ length: job.threads }, (_, t) =>
    new Promise<void>((resolve, reject) => {
      const w = new Worker(boot, { workerData: { entry: fileURLToPath(import.meta.url), job: { ...job, id: `${job.id}t${t}`, seed: job.seed * 31 + t } }, execArgv: [] });
      w.on('message', () => tick());
      w.once('error', reject);
      w.once('exit', (code) => (code === 0 ? resolve() : reject(new Error(`worker ${t} exited with ${code}`))));
    }),
  );
  try {
    await Promise.all([run(job, tick), ...workers]);
    process.stdout.write('done\n');
  } catch (err) {
    process.stderr.write(`writer ${job.id} failed: ${(err as Error).stack}\n`);
    process.exitCode = 1;
  }
} else {
  const job = (workerData as { job: Job }).job;
  await touchIndexes(job.stateDir, job.id);
  await run(job, () => parentPort!.postMessage('tick'));
  await touchIndexes(job.stateDir, job.id);
}
