// Which user and environment defaults an exec gets (pure functions the worker applies; the
// agent's side of users is tested in test/sdk/user.test.ts on a real VM).
import { describe, expect, it } from 'vitest';
import { execEnvDefaults, execUser } from '../../src/agent/execDefaults.ts';

describe('exec defaults', () => {
  it('takes the asked user, else a non-root image user, else none (root)', () => {
    expect(execUser('app', 'other')).toBe('app');
    expect(execUser('0', 'app')).toBe('0');
    expect(execUser(undefined, 'app')).toBe('app');
    expect(execUser(undefined, '1000:1000')).toBe('1000:1000');
    for (const root of ['', 'root', '0', '0:0', 'root:root', undefined]) expect(execUser(undefined, root)).toBeUndefined();
  });

  it('sets HOME only for root and TERM only on a tty, never over a given value', () => {
    expect(execEnvDefaults({ PATH: '/bin' }, { user: undefined, tty: false })).toEqual({ PATH: '/bin', HOME: '/root' });
    expect(execEnvDefaults({ PATH: '/bin' }, { user: 'app', tty: true })).toEqual({ PATH: '/bin', TERM: 'xterm-256color' });
    expect(execEnvDefaults({ HOME: '/h', TERM: 'dumb' }, { user: 'root', tty: true })).toEqual({ HOME: '/h', TERM: 'dumb' });
  });
});
