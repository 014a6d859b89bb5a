#!/usr/bin/env node
// The `corral` command. corral is TypeScript: the precompiled runtime runs it where the setup
// built it and it matches the sources (src/runtime/dist.ts), else tsx runs the sources (its
// loader registered, then src/cli/main.ts). Exit codes: see src/cli/exitCodes.ts and the README.
import { existsSync } from 'node:fs';

const dist = new URL('../node_modules/.corral-dist/', import.meta.url);
let main;
if (process.env.CORRAL_DIST !== '0' && existsSync(new URL('check.mjs', dist))) {
  const { distFresh } = await import(new URL('check.mjs', dist).href);
  if (distFresh()) ({ main } = await import(new URL('cli.mjs', dist).href));
}
if (!main) {
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import('../src/cli/main.ts'));
}
process.exitCode = await main(process.argv.slice(2));
