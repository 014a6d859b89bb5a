import { mkdtempSync } from 'node:fs';
import { Sandbox, Supervisor } from '../src/index.ts';
import { resolveAccel } from '../src/vm/accel.ts';
import { withBareRestore } from './floors.ts';
import { quantile } from './stats.ts';
const RUNS = Number(process.env.RUNS ?? 20);
const stateDir = mkdtempSync('/tmp/corral-jp-');
const sup = new Supervisor({ stateDir });
let key = '';
sup.events$.subscribe((e) => { if (e.type === 'sandbox.restored' && !e.template.startsWith('snapshot:')) key = e.template; });
for (const n of ['warm', 'warm2']) { const sb = await Sandbox.builder(n).supervisor(sup).create(); var mem = 256; await sb.kill(); await sup.remove(n); }
console.log('template', key, 'memory', mem);
const accel = resolveAccel();
const { readdirSync } = await import('node:fs');
const templateKey = key;
const res: Record<string, Record<string, number[]>> = { on: {}, off: {} };
for (let i = 0; i < RUNS * 2; i++) {
  const mode = (i + Math.floor(i / 2)) % 2 ? 'on' : 'off';
  if (mode === 'off') process.env.CORRAL_JAIL = 'off'; else delete process.env.CORRAL_JAIL;
  await withBareRestore({ stateDir, templateKey, memoryMib: mem, accel: accel.accel, i }, async (vm, t0) => {
    await vm.agent.ping();
    const all = { ...vm.bootPhases, pong: performance.now() - t0 };
    for (const [k, v] of Object.entries(all)) (res[mode]![k] ??= []).push(v);
  });
}
delete process.env.CORRAL_JAIL;
const prev: Record<string, number> = {};
for (const k of Object.keys(res.on!)) {
  const on = quantile(res.on![k]!, 0.5), off = quantile(res.off![k]!, 0.5);
  console.log(`${k.padEnd(10)} on ${on.toFixed(1).padStart(7)}  off ${off.toFixed(1).padStart(7)}  diff ${(on - off).toFixed(1).padStart(6)}`);
}
await sup.close();
