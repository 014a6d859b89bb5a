import { mkdtempSync } from 'node:fs';
import { Sandbox, Supervisor } from '../src/index.ts';
const sup = new Supervisor({ stateDir: process.env.SD ?? mkdtempSync('/tmp/corral-irq-') });
const tunes = ['true', 'echo 0 > /proc/sys/vm/dirty_writeback_centisecs', 'echo 1 > /proc/sys/vm/stat_interval'];
const sbs = await Promise.all(tunes.map(async (t, i) => { const sb = await Sandbox.builder(`j${i}`).replace().supervisor(sup).create(); await sb.shell(t); return sb; }));
const snap = async (sb: Sandbox) => Object.fromEntries((await sb.shell("grep -E 'LOC' /proc/interrupts | awk '{print $1, $2}'; grep -E 'TIMER|RCU' /proc/softirqs | awk '{print $1, $2}'")).stdout.trim().split('\n').map((l) => l.split(' ')).map(([k, v]) => [k, Number(v)]));
await new Promise((r) => setTimeout(r, 3000));
const a = await Promise.all(sbs.map(snap));
const W = Number(process.env.W ?? 40);
await new Promise((r) => setTimeout(r, W * 1000));
const b = await Promise.all(sbs.map(snap));
tunes.forEach((t, i) => console.log(t.padEnd(50), Object.keys(b[i]!).map((k) => `${k} ${((b[i]![k]! - a[i]![k]!) / W).toFixed(2)}/s`).join('  ')));
for (const sb of sbs) { await sb.kill(); await sup.remove(sb.name); }
await sup.close();
