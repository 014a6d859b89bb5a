/**
 * The main job, end to end: boot a sandbox from the default local image, run code in it,
 * print the output and every event the sandbox emitted.
 *
 *   npm run demo
 *   npm run demo -- 127.0.0.1:5000/python:3.12     (or CORRAL_DEMO_IMAGE=…): an OCI image,
 *                                                  pulled with a progress bar
 */
import { Sandbox, getDefaultSupervisor, type SandboxEvent } from '../src/index.ts';
import { pullProgress } from '../src/cli/pullProgress.ts';

const image = process.argv[2] ?? process.env.CORRAL_DEMO_IMAGE ?? 'corral/base';

function show(e: SandboxEvent): string {
  const t = new Date(e.ts).toISOString().slice(11, 23);
  const head = `${t} #${String(e.seq).padStart(3)} ${e.type.padEnd(18)}`;
  switch (e.type) {
    case 'exec.stdout':
    case 'exec.stderr':
      return `${head} exec ${e.execId}: ${JSON.stringify(Buffer.from(e.data).toString('utf8').slice(0, 60))}`;
    case 'sandbox.started':
      return `${head} pid ${e.pid}, ${e.accel}, kernel ${e.kernel}, boot ${e.bootMs.toFixed(0)} ms (guest ${e.guestBootMs} ms), agent ${e.agentVersion}`;
    case 'exec.started':
      return `${head} exec ${e.execId}: ${e.argv.join(' ')} (guest pid ${e.pid})`;
    case 'exec.exited':
      return `${head} exec ${e.execId}: code ${e.code}${e.signal ? ` signal ${e.signal}` : ''} in ${e.durationMs.toFixed(1)} ms`;
    default: {
      const { type: _t, name: _n, seq: _s, ts: _ts, ...rest } = e as unknown as Record<string, unknown>;
      return `${head} ${JSON.stringify(rest)}`;
    }
  }
}

const events: string[] = [];
const sup = getDefaultSupervisor();
const progress = pullProgress(process.stderr);
const sub = sup.events$.subscribe((e) => {
  events.push(show(e));
  // The pull's image.pull.* events, as a progress bar while the sandbox is created.
  if (e.type.startsWith('image.pull.')) progress(e as Parameters<typeof progress>[0]);
});

const t0 = performance.now();
const sb = await Sandbox.builder('demo')
  .image(image)
  .memory(256)
  .cpus(1)
  .workdir('/app')
  .env('DEBUG', 'true')
  .replace()
  .create();
const info = await sb.info();
console.log(`sandbox "${sb.name}" running: pid ${info.pid}, accel ${info.accel} (${info.accelReason}), kernel ${info.kernel}, created in ${(performance.now() - t0).toFixed(0)} ms\n`);

const r1 = await sb.exec('sh', ['-c', 'echo hi; echo oops >&2; exit 3']);
console.log(`$ sh -c 'echo hi; echo oops >&2; exit 3'\n  code=${r1.code} stdout=${JSON.stringify(r1.stdout)} stderr=${JSON.stringify(r1.stderr)}`);

const r2 = await sb.shell('pwd; echo DEBUG=$DEBUG; uname -sr; cat /proc/meminfo | head -1');
console.log(`$ pwd; echo DEBUG=$DEBUG; uname -sr; …\n${r2.stdout.replace(/^/gm, '  ')}`);

let lines = 0;
for await (const item of sb.execStream('seq', ['1', '5'])) {
  if (item.type === 'stdout') lines += Buffer.from(item.data).toString().split('\n').filter(Boolean).length;
  if (item.type === 'exited') console.log(`$ seq 1 5 (streamed): ${lines} lines, exit ${item.code}`);
}

const stopped = await sb.stop();
console.log(`\nstopped: reason ${stopped.stopReason}\n\nevents:`);
sub.unsubscribe();
console.log(events.join('\n'));
await sup.close();
