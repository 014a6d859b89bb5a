import { mkdtempSync, writeFileSync } from 'node:fs';
import { Sandbox, Supervisor } from '../src/index.ts';
const sup = new Supervisor({ stateDir: process.env.SD ?? mkdtempSync('/tmp/corral-irq-') });
const sb = await Sandbox.builder(`h0`).replace().supervisor(sup).create();
writeFileSync('/tmp/hold.pid', String((await sb.info()).pid));
await new Promise((r) => setTimeout(r, Number(process.env.HOLD ?? 20) * 1000));
await sb.kill(); await sup.remove(sb.name); await sup.close();
