/**
 * A call pending on a sandbox whose worker ends, or whose detached host dies, rejects with
 * a coded error instead of staying pending (which, in a plain script, ends Node with 13).
 */
import { Sandbox, Supervisor } from '../../../src/index.ts';
import { processAlive } from '../../../src/runtime/process.ts';
import { rejectsWith, same } from './expect.ts';

const sup = new Supervisor({ stateDir: process.env.CORRAL_STATE_DIR! });
const name = `settle-died-${process.pid}`;
const sb = await Sandbox.builder(name).image('corral/base').supervisor(sup).create();
const waiting = sb.wait();
// The worker is ended under the pending call (destroy() terminates workers at once).
await sup.destroy();
same(await rejectsWith(waiting, 'wait() on an ended worker'), 'E_CLOSED', 'pending call on an ended worker');
console.log('worker ended: pending call rejected E_CLOSED');

const dname = `${name}-d`;
const sup2 = new Supervisor({ stateDir: process.env.CORRAL_STATE_DIR! });
const d = await Sandbox.builder(dname).image('corral/base').supervisor(sup2).createDetached();
const rec = sup2.store.getSandbox(dname);
const hostPid = rec?.ownerPid;
if (!hostPid || hostPid === process.pid) throw new Error(`no host pid for ${dname}: ${JSON.stringify(rec)}`);
const pending = d.wait();
process.kill(hostPid, 'SIGKILL');
same(await rejectsWith(pending, 'wait() on a killed host'), 'E_CLOSED', 'pending call on a killed host');
// The VM watches its parent: it goes with the host. The record is repaired on read.
while (processAlive(hostPid)) await new Promise((r) => setTimeout(r, 20));
same(sup2.reconcile(dname)?.stopReason, 'crashed', 'the record of a killed host');
await Sandbox.remove(dname, { supervisor: sup2 });
await sup2.close();
console.log('host killed: pending call rejected E_CLOSED');
console.log('died ok');
