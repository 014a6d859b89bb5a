// Seed "Replace existing": replace() of a running sandbox stops and removes it, then creates a fresh one.
import { Sandbox } from 'corral';
import { check, id, rejectsWith } from './check.mjs';

const name = `${id}-worker`;
const first = await Sandbox.builder(name).image('corral/base').create();
await first.shell('echo old > /root/mark');
check('conflict without replace', (await rejectsWith('E_SANDBOX_EXISTS', () => Sandbox.builder(name).image('corral/base').create())) !== undefined);
const second = await Sandbox.builder(name).image('corral/base').replace().create();
try {
  check('fresh sandbox after replace', (await second.shell('cat /root/mark 2>/dev/null || echo fresh')).stdout === 'fresh\n');
  check('one record', (await Sandbox.list()).filter((s) => s.name === name).length === 1);
} finally {
  await second.stop();
  await Sandbox.remove(name);
}
console.log('done');
