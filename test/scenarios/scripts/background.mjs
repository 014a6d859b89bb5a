// E2B's background commands, as Node users write them: one process starts a long command in
// the background in a detached sandbox and exits (the handle holds nothing); another process
// lists the sandbox's commands, attaches by id, reads the output from the start (nothing
// lost while nobody was connected), feeds its stdin, and the command ends.
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { Sandbox } from 'corral';
import { check, id } from './check.mjs';

const name = `${id}-bg`;
const sb = await Sandbox.builder(name).image('corral/base').createDetached();
await sb.detach();

// The first client: its own Node process, which starts the command and ends at once.
writeFileSync('first-client.mjs', `
import { Sandbox } from 'corral';
const sb = await Sandbox.get(${JSON.stringify(name)});
const job = await sb.execStream('sh', ['-c', 'echo started; i=0; while [ $i -lt 5 ]; do i=$((i+1)); echo tick $i; done; read line; echo "got $line"'], { background: true, stdin: 'pipe' });
console.log(job.id);
await sb.detach();
`);
const first = spawnSync(process.execPath, [...process.execArgv, 'first-client.mjs'], { encoding: 'utf8', timeout: 60_000 });
const jobId = Number(first.stdout.trim());
check('the first client exits on its own while the command runs', first.status === 0 && jobId > 0, `${first.status} ${first.stderr}`);

const again = await Sandbox.get(name);
const listed = (await again.execs()).find((c) => c.id === jobId);
check('the command is listed', listed?.background === true && listed.argv[0] === 'sh', JSON.stringify(listed));
const job = await again.attach(jobId);
await job.write('hello\n');
await job.end();
let out = '';
let code;
for await (const item of job) {
  if (item.type === 'stdout') out += Buffer.from(item.data).toString();
  if (item.type === 'exited') code = item.code;
}
check('attached, it reads everything from the start and its stdin reaches the command', out === 'started\ntick 1\ntick 2\ntick 3\ntick 4\ntick 5\ngot hello\n' && code === 0, JSON.stringify({ out, code }));
await again.stop();
await Sandbox.remove(name);
console.log('done');
