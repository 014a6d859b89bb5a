// Run as a separate process by test/sdk/cleanup.test.ts: creates an attached sandbox,
// prints its VM pid, then ends the way argv[2] says: `exit` (returns without stopping it)
// or `hang` (waits to be SIGKILLed).
import { Sandbox } from '../../src/index.ts';

const sb = await Sandbox.builder(`child-${process.pid}`).create();
const info = await sb.info();
process.stdout.write(`${JSON.stringify({ vmPid: info.pid })}\n`);
if (process.argv[2] === 'hang') setInterval(() => {}, 1000);
