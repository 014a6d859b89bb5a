import { describe, expect, it } from 'vitest';
import { workerExecArgv } from '../../src/runtime/execArgv.ts';

describe('workerExecArgv', () => {
  it('drops the code of -e / --eval / -p / --print and --input-type', () => {
    expect(workerExecArgv(['--import', 'tsx', '--input-type=module', '-e', 'await x()'])).toEqual([]);
    expect(workerExecArgv(['--input-type', 'module', '--eval', 'x', '--max-old-space-size=512'])).toEqual(['--max-old-space-size=512']);
    expect(workerExecArgv(['-p', '1 + 1', '--print=2'])).toEqual([]);
  });

  it('drops inspector flags and tsx loaders, keeps the rest with their values', () => {
    expect(workerExecArgv(['--inspect=0', '--inspect-brk', '--enable-source-maps', '--require', '/x/node_modules/tsx/dist/cjs/index.cjs', '--conditions', 'dev'])).toEqual([
      '--enable-source-maps',
      '--conditions',
      'dev',
    ]);
    expect(workerExecArgv(['--import=tsx', '--import', './other.mjs'])).toEqual(['--import', './other.mjs']);
  });
});
