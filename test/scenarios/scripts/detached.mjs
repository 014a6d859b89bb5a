// Seed "Detached creation": the sandbox outlives this process; a second process reconnects
// with Sandbox.get, finds what the first wrote, stops and removes it.
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { Sandbox } from 'corral';
import { check, id } from './check.mjs';

const name = `${id}-bg`;
const sb = await Sandbox.builder(name).image('corral/base').createDetached();
check('detached', sb.detached === true);
await sb.shell('echo from-first > /root/note');
await sb.detach();

writeFileSync('./second.mjs', `
import { Sandbox } from 'corral';
import { check } from './check.mjs';
const sb = await Sandbox.get(${JSON.stringify(name)});
check('second process reconnects', sb.detached === true && (await sb.info()).status === 'running');
check('second process sees the first one\\'s file', (await sb.shell('cat /root/note')).stdout === 'from-first\\n');
const info = await sb.stop();
check('second process stops it', info.status === 'stopped');
await Sandbox.remove(${JSON.stringify(name)});
check('second process removes it', (await Sandbox.list()).every((s) => s.name !== ${JSON.stringify(name)}));
`);
// The same loader this process runs with (the --import of the runner).
const child = spawn(process.execPath, [...process.execArgv, 'second.mjs'], { stdio: ['ignore', 'inherit', 'inherit'] });
const code = await new Promise((resolve) => child.once('exit', resolve));
check('second process exit code 0', code === 0, String(code));
console.log('done');
