// Seed "Graceful shutdown with timeout fallback": a stop with a small timeoutMs on a guest that
// ignores it escalates to kill; so does an aborted signal. The guest that ignores the stop is
// the test suite's fake qemu in mode "deaf" (SCENARIO_FAKE_QEMU): a real guest agent always
// obeys SHUTDOWN, and qemu always obeys QMP quit, so no real VM can play this part.
import { Sandbox } from 'corral';
import { check, id } from './check.mjs';

const fake = process.env.SCENARIO_FAKE_QEMU;
if (!fake) throw new Error('SCENARIO_FAKE_QEMU is not set (path of test/helpers/fake-qemu.mjs)');
process.env.CORRAL_QEMU = fake;
process.env.CORRAL_FAKE_GUEST = 'deaf';
// The fake is a Node script of the repository, which a VM jail does not hold: it runs unjailed.
process.env.CORRAL_JAIL = 'off';

const a = await Sandbox.builder(`${id}-deaf`).template(false).create();
const viaTimeout = await a.stop({ timeoutMs: 500 });
// Still a requested stop (the caller asked for it), but the VM had to be SIGKILLed.
check('stop with timeoutMs escalates to kill', viaTimeout.status === 'stopped' && viaTimeout.stopReason === 'requested' && viaTimeout.exitSignal === 'SIGKILL', JSON.stringify(viaTimeout));
await Sandbox.remove(a.name);

const b = await Sandbox.builder(`${id}-abort`).template(false).create();
const controller = new AbortController();
const stopping = b.stop({ timeoutMs: 600_000, signal: controller.signal });
controller.abort();
const viaAbort = await stopping;
check('an aborted signal escalates to kill', viaAbort.status === 'stopped' && viaAbort.stopReason === 'killed' && viaAbort.exitSignal === 'SIGKILL', JSON.stringify(viaAbort));
await Sandbox.remove(b.name);
console.log('done');
