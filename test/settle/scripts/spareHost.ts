/**
 * Detached creates with spare hosts on, as a user's script runs them (the suite turns spares
 * off elsewhere): the first create starts a host and leaves a spare behind; the next create is
 * hosted by that spare, which is replaced by a new one; a stray connection does not take a
 * spare; a spare ends once its socket is gone, and by itself when idle.
 */
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { Sandbox } from '../../../src/index.ts';
import { same } from './expect.ts';

const stateDir = process.env.CORRAL_STATE_DIR;
if (!stateDir || process.env.CORRAL_SPARE_HOST === '0') throw new Error('run with a CORRAL_STATE_DIR of its own and spares on');
const runDir = join(stateDir, 'run');

const cmdline = (pid: number) => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return [];
  }
};
/** The pids of the spares of this state dir (processes started with `<stateDir> --spare`). */
const sparePids = () =>
  readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .map(Number)
    .filter((pid) => {
      const argv = cmdline(pid);
      const at = argv.indexOf('--spare');
      return at > 0 && argv[at - 1] === stateDir;
    });
const spareDir = join(runDir, 'spare');
const spareSockets = () => (existsSync(spareDir) ? readdirSync(spareDir).filter((f) => f.endsWith('.sock')) : []);
/** The node process a VM's qemu descends from: its host. */
const hostOf = (pid: number) => {
  for (let p = pid, i = 0; p > 1 && i < 8; i++) {
    if (cmdline(p)[0] === process.execPath) return p;
    p = Number(/^PPid:\s+(\d+)/m.exec(readFileSync(`/proc/${p}/status`, 'utf8'))?.[1] ?? 0);
  }
  return undefined;
};
async function until(cond: () => boolean, what: string, limitMs = 60_000): Promise<void> {
  for (const end = Date.now() + limitMs; !cond(); await new Promise((r) => setTimeout(r, 50))) {
    if (Date.now() > end) throw new Error(`never: ${what}`);
  }
}

const a = await Sandbox.builder('spare-a').image('corral/base').createDetached();
await until(() => sparePids().length === 1 && spareSockets().length === 1, 'a spare after the first create');
const [spare] = sparePids();
same(hostOf((await a.info()).pid!) === spare, false, 'the first create has a host of its own');
console.log('the first create left a spare');

// A connection that sends no create (or junk) does not take the spare.
await new Promise<void>((resolve) => {
  const s = connect(join(spareDir, spareSockets()[0]!));
  s.on('connect', () => s.write('junk\n'));
  s.on('error', () => resolve());
  s.on('close', () => resolve());
});
same(sparePids().join(), String(spare), 'the spare after a stray connection');

const b = await Sandbox.builder('spare-b').image('corral/base').createDetached();
const hostB = hostOf((await b.info()).pid!);
same(hostB, spare, `the second create is hosted by the spare (host: ${cmdline(hostB ?? 0).join(' ')}; spares now ${sparePids().join()})`);
same((await b.exec('echo', ['b'])).stdout.toString(), 'b\n', 'exec in the sandbox the spare hosts');
await until(() => sparePids().some((p) => p !== spare) && spareSockets().length === 1, 'a new spare, listening, after the spare was taken');
console.log('the spare hosted the next create, and a new spare followed');

await a.stop();
await b.stop();
await Sandbox.remove('spare-a');
await Sandbox.remove('spare-b');
same(sparePids().includes(spare!), false, 'the taken spare ends with its sandbox');

// A spare whose socket is gone (its state dir removed, say) ends.
for (const f of spareSockets()) rmSync(join(spareDir, f));
await until(() => sparePids().length === 0, 'the spare ends once its socket is gone');
console.log('a spare ended with its socket');

// One that nobody takes ends by itself.
process.env.CORRAL_SPARE_IDLE_MS = '500';
const c = await Sandbox.builder('spare-c').image('corral/base').createDetached();
await c.stop();
await Sandbox.remove('spare-c');
await until(() => sparePids().length === 0 && spareSockets().length === 0, 'an idle spare ends by itself');
console.log('an idle spare ended by itself');
console.log('spare ok');
