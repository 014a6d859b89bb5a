/**
 * replace() of a live attached sandbox, of a detached one and of a stopped record, in a
 * plain Node process: each replace settles, and the new sandbox runs.
 */
import { Sandbox } from '../../../src/index.ts';
import { rejectsWith, same } from './expect.ts';

const name = `settle-replace-${process.pid}`;

const a = await Sandbox.builder(name).image('corral/base').create();
same((await a.exec('echo', ['a'])).stdout.toString(), 'a\n', 'first exec');
same(await rejectsWith(Sandbox.builder(name).image('corral/base').create(), 'same name'), 'E_SANDBOX_EXISTS', 'same name without replace');
const b = await Sandbox.builder(name).image('corral/base').replace().create();
same(await rejectsWith(a.exec('true'), 'exec on the replaced handle'), 'E_CLOSED', 'exec on the replaced handle');
same((await b.exec('echo', ['b'])).stdout.toString(), 'b\n', 'exec in the replacement');
console.log('replaced a live attached sandbox');

const c = await Sandbox.builder(name).image('corral/base').replace().createDetached();
same(c.detached, true, 'detached');
same(await rejectsWith(b.exec('true'), 'exec on the replaced handle'), 'E_CLOSED', 'exec on an attached handle replaced by a detached one');
const d = await Sandbox.builder(name).image('corral/base').replace().create();
same((await d.exec('echo', ['d'])).stdout.toString(), 'd\n', 'exec after replacing a detached sandbox');
console.log('replaced a detached sandbox');

await d.stop();
const e = await Sandbox.builder(name).image('corral/base').replace().create();
same((await e.exec('echo', ['e'])).stdout.toString(), 'e\n', 'exec after replacing a stopped record');
await e.stop();
await Sandbox.remove(name);
console.log('replaced a stopped record');
console.log('replace ok');
