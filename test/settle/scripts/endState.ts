/**
 * stop, kill and drain resolve when the store says stopped, for an attached sandbox, a
 * detached one and a handle from Sandbox.get: remove() right after each works.
 */
import { Sandbox } from '../../../src/index.ts';
import { same } from './expect.ts';

const base = `settle-end-${process.pid}`;
let n = 0;

for (const detached of [false, true]) {
  for (const verb of ['stop', 'kill', 'drain'] as const) {
    const name = `${base}-${++n}`;
    const b = Sandbox.builder(name).image('corral/base');
    const sb = detached ? await b.createDetached() : await b.create();
    same((await sb.exec('true')).code, 0, `${name}: exec`);
    const info = await sb[verb]();
    same(info.status, 'stopped', `${name}: ${verb}() resolves with`);
    await Sandbox.remove(name);
    console.log(`${detached ? 'detached' : 'attached'} ${verb} then remove`);
  }
}

// A handle from Sandbox.get (a new connection to the detached host) stops it just the same.
const name = `${base}-get`;
const first = await Sandbox.builder(name).image('corral/base').createDetached();
await first.detach();
const again = await Sandbox.get(name);
same((await again.exec('true')).code, 0, 'exec through Sandbox.get');
await again.stop();
await Sandbox.remove(name);
console.log('Sandbox.get stop then remove');
console.log('end state ok');
