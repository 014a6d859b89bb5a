// Seed "Config inspection": build() without booting, through JSON, then Sandbox.create(config).
import { Sandbox } from 'corral';
import { check, id } from './check.mjs';

const config = Sandbox.builder(`${id}-preview`).image('corral/base').memory(256).env('FROM', 'json').build();
const json = JSON.stringify(config, null, 2);
const parsed = JSON.parse(json);
check('config is plain JSON', parsed.name === `${id}-preview` && parsed.memoryMib === 256);
check('build boots nothing', (await Sandbox.list()).every((s) => s.name !== parsed.name));
const sb = await Sandbox.create(parsed);
try {
  check('created from the parsed config', (await sb.shell('echo $FROM')).stdout === 'json\n');
} finally {
  await sb.stop();
  await Sandbox.remove(sb.name);
}
console.log('done');
