// The { signal, timeoutMs } contract of every async public call (src/runtime/callOptions.ts),
// on simulated time: conditions (which error, whether the operation was undone), not durations.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Image, Sandbox, Snapshot, Supervisor, Volume } from '../../src/index.ts';
import { bounded, validateCallOptions } from '../../src/runtime/callOptions.ts';

describe('bounded calls', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('passes the answer through, and no signal to a call given no options', async () => {
    const run = vi.fn(async (signal: AbortSignal | undefined) => (signal === undefined ? 'plain' : 'signalled'));
    await expect(bounded('a call', undefined, run)).resolves.toBe('plain');
    await expect(bounded('a call', {}, run)).resolves.toBe('plain');
    await expect(bounded('a call', { timeoutMs: 50 }, run)).resolves.toBe('signalled');
    expect(vi.getTimerCount()).toBe(0); // the timeout's timer went with the answer
  });

  it('rejects E_TIMEOUT once timeoutMs passed, naming the call; the operation is left running', async () => {
    let settle!: (v: string) => void;
    const op = new Promise<string>((r) => (settle = r));
    const call = bounded('pause of sandbox "a"', { timeoutMs: 100 }, () => op);
    const seen = expect(call).rejects.toMatchObject({ code: 'E_TIMEOUT', message: 'pause of sandbox "a" did not finish within 100 ms' });
    await vi.advanceTimersByTimeAsync(100);
    await seen;
    settle('late'); // nobody waits for it any more, and nothing fails
  });

  it('rejects E_ABORTED with the reason as cause, at once when the signal already fired', async () => {
    const reason = new Error('changed my mind');
    const run = vi.fn(async () => 'ran');
    await expect(bounded('info of sandbox "a"', { signal: AbortSignal.abort(reason) }, run)).rejects.toMatchObject({ code: 'E_ABORTED', cause: reason });
    expect(run).not.toHaveBeenCalled();
    const c = new AbortController();
    const call = bounded('wait for sandbox "a"', { signal: c.signal }, () => new Promise(() => {}));
    c.abort(reason);
    await expect(call).rejects.toMatchObject({ code: 'E_ABORTED', message: 'wait for sandbox "a" was aborted: changed my mind' });
  });

  it('keeps the first of signal and timeout as the reason', async () => {
    const c = new AbortController();
    const call = bounded('a call', { signal: c.signal, timeoutMs: 10 }, () => new Promise(() => {}));
    const seen = expect(call).rejects.toMatchObject({ code: 'E_TIMEOUT' });
    await vi.advanceTimersByTimeAsync(10);
    c.abort();
    await seen;
  });

  it('an abortable call hands the signal on and answers only once the operation undid itself', async () => {
    const undone: string[] = [];
    const call = bounded(
      'create of sandbox "a"',
      { timeoutMs: 5 },
      (signal) =>
        new Promise<string>((resolve) => {
          // It notices the abort, cleans up (a VM killed), then settles, here with a value.
          signal!.addEventListener('abort', () => setTimeout(() => (undone.push('vm killed'), resolve('made anyway')), 20));
        }),
      true,
    );
    let answered = false;
    void call.catch(() => (answered = true));
    await vi.advanceTimersByTimeAsync(5);
    expect(answered).toBe(false); // still undoing
    await vi.advanceTimersByTimeAsync(20);
    await expect(call).rejects.toMatchObject({ code: 'E_TIMEOUT' });
    expect(undone).toEqual(['vm killed']);
  });

  it('a failure of the operation before any abort is passed on as it is', async () => {
    const err = new Error('boom');
    await expect(bounded('a call', { timeoutMs: 100 }, async () => Promise.reject(err))).rejects.toBe(err);
  });
});

describe('call options validation', () => {
  it('names the bad option and what it takes', () => {
    expect(() => validateCallOptions({ timeoutMs: -1 })).toThrowError(expect.objectContaining({ code: 'E_INVALID_OPTION', message: expect.stringMatching(/timeoutMs.*positive number of ms/) }));
    expect(() => validateCallOptions({ timeoutMs: Number.NaN })).toThrowError(/timeoutMs/);
    expect(() => validateCallOptions({ signal: 'stop' })).toThrowError(expect.objectContaining({ code: 'E_INVALID_OPTION', message: expect.stringMatching(/signal.*AbortSignal/) }));
    expect(() => validateCallOptions('soon')).toThrowError(/options/);
    expect(() => validateCallOptions({ signal: new AbortController().signal, timeoutMs: 1 })).not.toThrow();
  });
});

// The SDK's entries that need no VM take the contract too (those that do: the cancel scenario,
// test/scenarios/scripts/cancel.ts, and test/sdk/exec.test.ts).
describe('the contract on every SDK entry that needs no VM', () => {
  const stateDir = mkdtempSync(join(tmpdir(), 'corral-callopts-'));
  const supervisor = new Supervisor({ stateDir });
  afterAll(async () => {
    await supervisor.close();
    rmSync(stateDir, { recursive: true, force: true });
  });
  const aborted = () => ({ signal: AbortSignal.abort(new Error('no')) });
  it.each([
    ['Sandbox.list', (o: object) => Sandbox.list({ supervisor, ...o })],
    ['Sandbox.get', (o: object) => Sandbox.get('nope', { supervisor, ...o })],
    ['Sandbox.logs', (o: object) => Sandbox.logs('nope', { supervisor, ...o })],
    ['Sandbox.remove', (o: object) => Sandbox.remove('nope', { supervisor, ...o })],
    ['Volume.list', (o: object) => Volume.list({ supervisor, ...o })],
    ['Volume.create', (o: object) => Volume.create('v1', { supervisor, ...o })],
    ['Volume.remove', (o: object) => Volume.remove('v1', { supervisor, ...o })],
    ['Snapshot.list', (o: object) => Snapshot.list({ supervisor, ...o })],
    ['Snapshot.remove', (o: object) => Snapshot.remove('nope', { supervisor, ...o })],
    ['Image.list', (o: object) => Image.list({ stateDir, ...o })],
    ['Image.prune', (o: object) => Image.prune({ stateDir, ...o })],
  ])('%s: an aborted signal rejects E_ABORTED, a bad timeoutMs E_INVALID_OPTION', async (_, call) => {
    await expect(call(aborted())).rejects.toMatchObject({ code: 'E_ABORTED' });
    await expect(call({ timeoutMs: 0 })).rejects.toMatchObject({ code: 'E_INVALID_OPTION', message: expect.stringContaining('timeoutMs') });
  });
});
