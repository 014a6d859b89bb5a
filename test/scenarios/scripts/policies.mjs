// Seed "Sandbox Process Policies": max duration and idle timeout, enforced on the host; an
// idle timeout that pauses (E2B's onTimeout: 'pause'), resumed by the next call; a lifetime
// set again while the sandbox runs (E2B's setTimeout).
import { Sandbox } from 'corral';
import { check, id } from './check.mjs';

const capped = await Sandbox.builder(`${id}-capped`).image('corral/base').maxDuration(2).logLevel('warn').create();
const idle = await Sandbox.builder(`${id}-idle`).image('corral/base').idleTimeout(2).create();
// An exec running keeps the idle timer off; once it ends the sandbox may go idle.
check('busy is not idle', (await idle.shell('sleep 3; echo worked')).stdout === 'worked\n');
const [c, i] = await Promise.all([capped.wait(), idle.wait()]);
check('max duration drains it', c.status === 'stopped' && c.stopReason === 'max-duration', JSON.stringify(c));
check('idle timeout drains it', i.status === 'stopped' && i.stopReason === 'idle-timeout', JSON.stringify(i));
await Sandbox.remove(capped.name);
await Sandbox.remove(idle.name);

const napper = await Sandbox.builder(`${id}-napper`).image('corral/base').idleTimeout(1, { action: 'pause' }).create();
// waitForEvent is a call: it holds the process while it waits (a bare events$ subscription does not).
await napper.waitForEvent('sandbox.paused', { where: (e) => e.reason === 'idle' });
const resumed = napper.waitForEvent('sandbox.resumed');
const out = await napper.exec('echo', ['awake']);
check('an idle pause is resumed by the next exec', out.stdout === 'awake\n' && (await resumed).reason === 'call', JSON.stringify(out));
await napper.setMaxDuration(1);
const n = await napper.wait();
check('setMaxDuration ends it from now', n.stopReason === 'max-duration', JSON.stringify(n));
await Sandbox.remove(napper.name);
console.log('done');
