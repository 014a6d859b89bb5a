// The CLI's value parsers (src/cli/options.ts): what each accepts, and that each refusal
// names the flag as typed and what it allows. Pure functions: nothing boots.
import { describe, expect, it } from 'vitest';
import { createFields, hostPort, integerArg, policyMs, portPair, signalNumber } from '../../src/cli/options.ts';

const refused = (option: string, message: string) => expect.objectContaining({ code: 'E_INVALID_OPTION', message: expect.stringContaining(`invalid option ${option}: ${message}`) });

describe('the CLI option parsers', () => {
  it('reads seconds as ms within the policy range, and names the flag otherwise', () => {
    expect(policyMs('30', '--idle-timeout')).toBe(30_000);
    expect(policyMs('0.5', '--max-duration')).toBe(500);
    expect(policyMs('2592000', '--max-duration')).toBe(2_592_000_000);
    for (const bad of ['', ' ', 'abc', '0', '0.01', '-1', '2592001', 'Infinity']) {
      expect(() => policyMs(bad, '--idle-timeout')).toThrow(refused('--idle-timeout', 'a number of seconds from 0.1 to 2592000'));
    }
  });

  it('reads HOSTPORT:GUESTPORT and a host port', () => {
    expect(portPair('18080:8080', '--port')).toEqual({ hostPort: 18080, guestPort: 8080 });
    for (const bad of ['8080', '0:80', '80:0', '70000:80', '80:', ':80', 'a:b', '1:2:3', '127.0.0.1:80:80']) {
      expect(() => portPair(bad, '--port')).toThrow(refused('--port', 'two TCP ports from 1 to 65535'));
    }
    expect(hostPort('65535', 'HOSTPORT')).toBe(65535);
    for (const bad of ['0', '65536', 'http', '-1']) expect(() => hostPort(bad, 'HOSTPORT')).toThrow(refused('HOSTPORT', 'a TCP port from 1 to 65535'));
  });

  it('reads a signal by name, with or without SIG, or by number', () => {
    expect(signalNumber('TERM')).toBe(15);
    expect(signalNumber('sigkill')).toBe(9);
    expect(signalNumber('INT')).toBe(2);
    expect(signalNumber('10')).toBe(10);
    for (const bad of ['FOO', '0', '65', '', 'SIG']) expect(() => signalNumber(bad)).toThrow(refused('--signal', 'a signal name (KILL, TERM'));
  });

  it('reads ids and seqs as integers from their minimum', () => {
    expect(integerArg('7', 'ID', 1, 'an id')).toBe(7);
    expect(integerArg('0', '--since', 0, 'a seq')).toBe(0);
    for (const bad of ['0', '-1', '1.5', 'x', '99999999999999999999']) expect(() => integerArg(bad, 'ID', 1, 'an id')).toThrow(refused('ID', 'an id'));
  });

  it("turns create's options into config fields, and refuses combinations that say nothing", () => {
    expect(createFields({})).toEqual({});
    expect(
      createFields({ port: ['1:2', '3:4'], 'idle-timeout': '30', 'idle-action': 'pause', 'max-duration': '600', 'start-cmd': 'serve', 'ready-cmd': 'probe', 'from-snapshot': 'warm' }),
    ).toEqual({
      ports: [
        { hostPort: 1, guestPort: 2 },
        { hostPort: 3, guestPort: 4 },
      ],
      idleTimeoutMs: 30_000,
      idleAction: 'pause',
      maxDurationMs: 600_000,
      startCmd: 'serve',
      readyCmd: 'probe',
      fromSnapshot: 'warm',
    });
    expect(() => createFields({ 'idle-timeout': '5', 'idle-action': 'nap' })).toThrow(refused('--idle-action', 'one of pause, stop'));
    expect(() => createFields({ 'idle-action': 'stop' })).toThrow(expect.objectContaining({ code: 'E_USAGE', message: expect.stringContaining('give --idle-timeout S too') }));
    expect(() => createFields({ 'ready-cmd': 'true' })).toThrow(expect.objectContaining({ code: 'E_USAGE', message: expect.stringContaining('give --start-cmd CMD too') }));
    expect(() => createFields({ 'start-cmd': '  ' })).toThrow(refused('--start-cmd', 'a non-empty shell command'));
  });
});
