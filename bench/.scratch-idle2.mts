import { mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { Sandbox, Supervisor } from '../src/index.ts';
const sup = new Supervisor({ stateDir: process.env.SD ?? mkdtempSync('/tmp/corral-irq-') });
const sb = await Sandbox.builder(`k0`).replace().supervisor(sup).create();
const pid = (await sb.info()).pid!;
const read = () => Object.fromEntries(readdirSync(`/proc/${pid}/task`).map((t) => {
  const st = readFileSync(`/proc/${pid}/task/${t}/status`, 'utf8');
  const f = readFileSync(`/proc/${pid}/task/${t}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return [t, { name: /Name:\s+(.*)/.exec(st)![1], vcs: Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(st)![1]), cpu: Number(f[11]) + Number(f[12]) }];
}));
await new Promise((r) => setTimeout(r, 3000));
const a = read();
const W = Number(process.env.W ?? 30);
await new Promise((r) => setTimeout(r, W * 1000));
const b = read();
for (const t of Object.keys(b)) if (a[t]) console.log(t, b[t]!.name.padEnd(16), `wakeups ${((b[t]!.vcs - a[t]!.vcs) / W).toFixed(2)}/s`, `cpu ticks ${b[t]!.cpu - a[t]!.cpu}`);
const f = (x: string) => readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
await sb.kill(); await sup.remove(sb.name); await sup.close();
