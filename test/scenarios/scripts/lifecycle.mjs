// Seed "Lifecycle": stop/start/kill, pause/resume, drain, detach, list/get/remove.
import { Sandbox } from 'corral';
import { check, id, rejectsWith } from './check.mjs';

const name = `${id}-worker`;
const sb = await Sandbox.builder(name).image('corral/base').label('scenario', id).create();
await sb.shell('echo before-stop > /root/kept');
const stopped = await sb.stop();
check('stop', stopped.status === 'stopped' && stopped.stopReason === 'requested', JSON.stringify(stopped));

const again = await Sandbox.start(name);
check('start keeps what was written before stop', (await again.shell('cat /root/kept')).stdout === 'before-stop\n');

const running = again.shell('sleep 1; echo carried-on');
await again.pause();
check('pause', (await again.info()).status === 'paused');
await again.resume();
check('resume carries the running exec on', (await running).stdout === 'carried-on\n');

await again.detach();
const handle = await Sandbox.get(name);
check('get after detach reaches the running sandbox', (await handle.shell('echo still-here')).stdout === 'still-here\n');
const row = (await Sandbox.list({ labels: { scenario: id } })).map((s) => `${s.name}:${s.status}`);
check('list', row.length === 1 && row[0] === `${name}:running`, JSON.stringify(row));

const killed = await handle.kill();
check('kill', killed.status === 'stopped' && killed.stopReason === 'killed', JSON.stringify(killed));

const drainee = await (await Sandbox.get(name)).start();
// Drain only once the exec runs in the guest: a drain that comes first would find nothing in flight.
let sub;
const execStarted = new Promise((resolve) => {
  sub = drainee.events$.subscribe((e) => {
    if (e.type === 'exec.started' && e.argv.includes('sleep 1; echo finished')) resolve();
  });
});
const inFlight = drainee.shell('sleep 1; echo finished');
await execStarted;
sub.unsubscribe();
const drained = drainee.drain();
const refused = await rejectsWith('E_ILLEGAL_STATE', () => drainee.exec('true')).catch((err) => err);
check('drain refuses new execs', refused?.code === 'E_ILLEGAL_STATE' || refused?.code === 'E_CLOSED', String(refused));
check('drain lets the running exec finish', (await inFlight).stdout === 'finished\n');
check('drain ends stopped/drained', (await drained).stopReason === 'drained');

await Sandbox.remove(name);
check('remove', (await rejectsWith('E_SANDBOX_NOT_FOUND', () => Sandbox.get(name))) !== undefined);
console.log('done');
