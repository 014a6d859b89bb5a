/** Only the code the -e one-liner of settle.test.ts evaluates (kept here so that it reads as code). */
export const ONE_LINER = [
  "import { Sandbox } from 'corral';",
  'const name = `settle-e-${process.pid}`;',
  "const sb = await Sandbox.builder(name).image('corral/base').create();",
  "const r = await sb.exec('echo', ['from -e']);",
  'await sb.stop();',
  'await Sandbox.remove(name);',
  'console.log(String(r.stdout).trim(), "ok");',
].join(' ');
