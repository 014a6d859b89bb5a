// Seed "Sandbox Process Policies": max duration and idle timeout, enforced on the host.
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
console.log('done');
