// Cancellation and disposal as a TypeScript user writes them (run with tsx, as such a user
// would): `{ signal, timeoutMs }` on calls, `await using` on sandboxes and exec streams,
// close() and destroy(). The process must exit 0 on its own with nothing left running.
import { Sandbox } from 'corral';
import { check, id, rejectsWith } from './check.mjs';

const timedOut = await rejectsWith('E_TIMEOUT', () => Sandbox.builder(`${id}-late`).create({ timeoutMs: 1 }));
const late = (await Sandbox.list()).find((s) => s.name === `${id}-late`);
check('a create past its timeoutMs rejects E_TIMEOUT and leaves a stopped record', timedOut !== undefined && late?.status === 'stopped' && late?.stopReason === 'boot-failed', JSON.stringify(late));
await Sandbox.remove(`${id}-late`);

let name;
{
  await using sb = await Sandbox.builder(`${id}-using`).create();
  name = sb.name;
  const waited = await rejectsWith('E_TIMEOUT', () => sb.wait({ timeoutMs: 200 }));
  check('wait with timeoutMs rejects E_TIMEOUT and the sandbox runs on', waited !== undefined && (await sb.info()).status === 'running');
  const aborted = await rejectsWith('E_ABORTED', () => sb.info({ signal: AbortSignal.abort(new Error('changed my mind')) }));
  check('an aborted signal rejects E_ABORTED with its reason', aborted?.message.includes('changed my mind'), aborted?.message);
  const bad = await rejectsWith('E_INVALID_OPTION', () => sb.pause({ timeoutMs: -5 }));
  check('a bad timeoutMs names the option', bad?.message.includes('timeoutMs'), bad?.message);
  {
    await using cat = await sb.execStream('cat', [], { stdin: 'pipe' });
    await cat.write('x');
  }
  const forever = await sb.execStream('sleep', ['1000']);
  const ended = await forever.destroy();
  check('destroy() kills a running exec', ended.signal === 9, JSON.stringify(ended));
  const closed = await (await sb.execStream('sleep', ['1000'])).close({ timeoutMs: 100 });
  check('close() kills an exec still running after its timeoutMs', closed.signal === 9, JSON.stringify(closed));
}
const after = await (await Sandbox.get(name)).info();
check('await using stops the sandbox at the end of its block', after.status === 'stopped' && after.stopReason === 'requested', JSON.stringify(after));
await Sandbox.remove(name);

const sb = await Sandbox.builder(`${id}-destroy`).create();
const first = await sb.destroy();
const again = await sb.destroy();
check('destroy() kills, and again answers the stopped record', first.stopReason === 'killed' && again.status === 'stopped', JSON.stringify(again));
await Sandbox.remove(sb.name);
console.log('done');
