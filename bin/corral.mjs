#!/usr/bin/env node
// The `corral` command. corral is TypeScript run through tsx: register its loader, then run
// the CLI (src/cli/main.ts). Exit codes: see src/cli/exitCodes.ts and the README.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/cli/main.ts');
process.exitCode = await main(process.argv.slice(2));
