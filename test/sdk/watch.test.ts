// sandbox.fs().watch() on real sandboxes: inotify in the guest agent, the changes carried as
// `fs.watch` events to an AsyncIterable and an Observable in the caller's thread. The
// changes are made by commands in the guest, as a user's program would make them.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CorralError, InvalidOptionError, Sandbox, Snapshot, type FsWatch, type FsWatchEvent } from '../../src/index.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

/** Iterates `w` until `done` holds for what was seen (a condition: the test timeout bounds it). */
async function until(w: FsWatch, done: (seen: readonly FsWatchEvent[]) => boolean): Promise<FsWatchEvent[]> {
  const seen: FsWatchEvent[] = [];
  if (done(seen)) return seen;
  for await (const e of w) {
    seen.push(e);
    if (done(seen)) return seen;
  }
  throw new Error(`the watch ended (${w.endReason}) before the condition held; seen: ${JSON.stringify(seen)}`);
}

const has = (type: string, path: string) => (seen: readonly FsWatchEvent[]) => seen.some((e) => e.type === type && e.path === path);

describe('sandbox.fs().watch()', () => {
  let sup: Supervisor;
  let sb: Sandbox;

  beforeAll(async () => {
    sup = testSupervisor();
    sb = await Sandbox.builder(uniqueName('watch')).image('corral/base').memory(256).cpus(1).supervisor(sup).create();
  });
  afterAll(async () => {
    await sb?.stop();
    await sup?.close();
  });

  it('reports creates, writes, removes and renames made in the guest, with absolute and relative paths', async () => {
    await sb.fs().mkdir('/tmp/w1');
    const w = await sb.fs().watch('/tmp/w1');
    try {
      await sb.shell('echo one > /tmp/w1/a.txt; echo two >> /tmp/w1/a.txt; mv /tmp/w1/a.txt /tmp/w1/b.txt; rm /tmp/w1/b.txt; mkdir /tmp/w1/d');
      const seen = await until(w, has('create', '/tmp/w1/d'));
      expect(seen).toContainEqual({ type: 'create', path: '/tmp/w1/a.txt', name: 'a.txt', isDir: false });
      expect(seen).toContainEqual({ type: 'write', path: '/tmp/w1/a.txt', name: 'a.txt', isDir: false });
      expect(seen).toContainEqual({ type: 'rename', path: '/tmp/w1/b.txt', name: 'b.txt', from: '/tmp/w1/a.txt', isDir: false });
      expect(seen).toContainEqual({ type: 'remove', path: '/tmp/w1/b.txt', name: 'b.txt', isDir: false });
      expect(seen).toContainEqual({ type: 'create', path: '/tmp/w1/d', name: 'd', isDir: true });
      // In the order they happened.
      const order = seen.map((e) => e.type).filter((t, i, a) => a.indexOf(t) === i);
      expect(order).toEqual(['create', 'write', 'rename', 'remove']);
    } finally {
      await w.stop();
    }
  });

  it('a recursive watch sees files in a subdirectory made after it started; a plain one does not', async () => {
    await sb.fs().mkdir('/tmp/w2');
    const deep = await sb.fs().watch('/tmp/w2', { recursive: true });
    const flat = await sb.fs().watch('/tmp/w2');
    try {
      await sb.shell('mkdir -p /tmp/w2/new/sub && echo x > /tmp/w2/new/sub/f && touch /tmp/w2/marker');
      const d = await until(deep, (s) => has('create', '/tmp/w2/new/sub/f')(s) && has('create', '/tmp/w2/marker')(s));
      expect(d).toContainEqual({ type: 'create', path: '/tmp/w2/new/sub', name: 'new/sub', isDir: true });
      // The plain watch's events come in order from one inotify queue: the marker is last.
      const f = await until(flat, has('create', '/tmp/w2/marker'));
      expect(f).toContainEqual({ type: 'create', path: '/tmp/w2/new', name: 'new', isDir: true });
      expect(f.filter((e) => e.name.includes('/'))).toEqual([]);
    } finally {
      await deep.stop();
      await flat.stop();
    }
  });

  it('stop() ends the iteration and the events$ Observable', async () => {
    await sb.fs().mkdir('/tmp/w3');
    const w = await sb.fs().watch('/tmp/w3');
    let completed = false;
    w.events$.subscribe({ complete: () => (completed = true) });
    const iterated = (async () => {
      const seen: FsWatchEvent[] = [];
      for await (const e of w) seen.push(e);
      return seen;
    })();
    await sb.fs().write('/tmp/w3/x', 'x');
    await w.stop();
    await iterated;
    expect(completed).toBe(true);
    expect(w.endReason).toBe('stopped');
    await w.stop(); // idempotent
  });

  it('ends with reason removed when the watched directory is removed', async () => {
    await sb.fs().mkdir('/tmp/w4/in', { recursive: true });
    const w = await sb.fs().watch('/tmp/w4', { recursive: true });
    await sb.shell('touch /tmp/w4/in/f; rm -r /tmp/w4');
    const seen: FsWatchEvent[] = [];
    for await (const e of w) seen.push(e);
    expect(w.endReason).toBe('removed');
    expect(seen).toContainEqual({ type: 'create', path: '/tmp/w4/in/f', name: 'in/f', isDir: false });
  });

  it('bounds what waits for a consumer: past maxQueuedEvents one overflow event stands for the rest', async () => {
    await sb.fs().mkdir('/tmp/w5');
    const w = await sb.fs().watch('/tmp/w5', { maxQueuedEvents: 16 });
    try {
      // Counted on the Observable (it gets every event); the iteration has not pulled any yet.
      let count = 0;
      const many = new Promise<void>((resolve) => w.events$.subscribe(() => ++count >= 100 && resolve()));
      await sb.shell('for i in $(seq 1 100); do touch /tmp/w5/f$i; done');
      await many;
      const seen = await until(w, (s) => s.some((e) => e.type === 'overflow'));
      expect(seen).toHaveLength(17);
      expect(seen.slice(0, 16).every((e) => e.type === 'create')).toBe(true);
      expect(seen[16]).toEqual({ type: 'overflow', path: '/tmp/w5', name: '', isDir: true });
    } finally {
      await w.stop();
    }
  });

  it("turns the guest kernel's inotify queue overflowing into one overflow event, and goes on", async () => {
    await sb.fs().mkdir('/tmp/w7');
    // New inotify instances take the guest's limit as it is at their start: 8 queued events.
    const old = (await sb.shell('cat /proc/sys/fs/inotify/max_queued_events')).stdout.trim();
    await sb.shell('echo 8 > /proc/sys/fs/inotify/max_queued_events');
    const w = await sb.fs().watch('/tmp/w7');
    await sb.shell(`echo ${old} > /proc/sys/fs/inotify/max_queued_events`);
    try {
      // A SPAWN probe holds the agent (it serves nothing else meanwhile) while 50 files are
      // made: the kernel's queue of the watch fills at 8 and overflows, deterministically.
      const r = await sb.probe({ op: 'spawn', argv: ['sh', '-c', 'for i in $(seq 1 50); do : > /tmp/w7/f$i; done'], count: 1 });
      expect(r).toMatchObject({ status: 0 });
      await sb.fs().write('/tmp/w7/after', '');
      const seen = await until(w, has('create', '/tmp/w7/after'));
      expect(seen.filter((e) => e.type === 'overflow')).toEqual([{ type: 'overflow', path: '/tmp/w7', name: '', isDir: true }]);
      expect(seen.filter((e) => e.type === 'create').length).toBeLessThan(20);
    } finally {
      await w.stop();
    }
  });

  it('refuses a missing path (E_FS ENOENT), a file (ENOTDIR) and wrong options, naming them', async () => {
    await expect(sb.fs().watch('/no/such/dir')).rejects.toMatchObject({ code: 'E_FS', details: { errno: 'ENOENT', path: '/no/such/dir' } });
    await expect(sb.fs().watch('/etc/passwd')).rejects.toMatchObject({ code: 'E_FS', details: { errno: 'ENOTDIR' } });
    const wrong: Array<[unknown, string, string]> = [
      [{ recursive: 'yes' }, 'recursive', 'true or false'],
      [{ maxQueuedEvents: 0 }, 'maxQueuedEvents', 'an integer from 1 to 1000000'],
      [{ recursve: true }, 'recursve', 'one of recursive, signal, timeoutMs, maxQueuedEvents'],
      [{ timeoutMs: -1 }, 'timeoutMs', 'a positive number of ms'],
    ];
    for (const [options, option, allowed] of wrong) {
      const err = await sb.fs().watch('/tmp', options as never).then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(InvalidOptionError);
      expect((err as CorralError).details).toMatchObject({ option });
      expect((err as Error).message).toContain(allowed);
    }
    await expect(sb.fs().watch('relative')).rejects.toMatchObject({ code: 'E_INVALID_OPTION', details: { option: 'path' } });
  });

  it('sleeps through pause() and goes on after resume()', async () => {
    await sb.fs().mkdir('/tmp/w6');
    const w = await sb.fs().watch('/tmp/w6');
    try {
      await sb.pause();
      await sb.resume();
      await sb.fs().write('/tmp/w6/after-resume', 'x');
      await until(w, has('create', '/tmp/w6/after-resume'));
      expect(w.endReason).toBeUndefined();
    } finally {
      await w.stop();
    }
  });

  it('an aborted signal stops the watch', async () => {
    const ac = new AbortController();
    const w = await sb.fs().watch('/tmp', { signal: ac.signal });
    ac.abort();
    expect(await w.ended).toBe('stopped');
  });
});

describe('a watch and its sandbox', () => {
  let sup: Supervisor;
  beforeAll(() => {
    sup = testSupervisor();
  });
  afterAll(async () => {
    await sup?.close();
  });

  it('ends (the iteration completes) when the sandbox stops', async () => {
    const sb = await Sandbox.builder(uniqueName('watch-stop')).image('corral/base').memory(256).cpus(1).supervisor(sup).create();
    try {
      const w = await sb.fs().watch('/tmp', { recursive: true });
      const iterated = (async () => {
        for await (const _ of w) {
          // draining whatever came before the stop
        }
      })();
      await sb.stop();
      await iterated;
      expect(w.endReason).toBe('sandbox-stopped');
    } finally {
      await sb.stop();
    }
  });

  it('a sandbox from a snapshot runs none of the watches of its source, whose watch goes on', async () => {
    // The agent's inotify instances, as the guest's own /proc shows them.
    const inotifyFds = async (sb: Sandbox) => Number((await sb.shell('ls -l /proc/1/fd | grep -c inotify || true')).stdout.trim());
    const src = await Sandbox.builder(uniqueName('watch-src')).image('corral/base').memory(256).cpus(1).supervisor(sup).create();
    const snap = uniqueName('watch-snap');
    let copy: Sandbox | undefined;
    try {
      const w = await src.fs().watch('/tmp', { recursive: true });
      await src.snapshot(snap);
      copy = await Sandbox.builder(uniqueName('watch-copy')).fromSnapshot(snap).supervisor(sup).create();
      // The restored agent got WATCH_STOP for its orphans before this exec's frame.
      expect(await inotifyFds(copy)).toBe(0);
      expect(await inotifyFds(src)).toBe(1);
      await src.fs().write('/tmp/after-snapshot', 'x');
      await until(w, has('create', '/tmp/after-snapshot'));
      await w.stop();
    } finally {
      await copy?.stop();
      await src.stop();
      await Snapshot.remove(snap, { supervisor: sup });
    }
  });

  it('works on a detached sandbox, its events and calls over the control socket of its host process', async () => {
    const name = uniqueName('watch-det');
    const det = await Sandbox.builder(name).image('corral/base').memory(256).cpus(1).supervisor(sup).createDetached();
    try {
      const w = await det.fs().watch('/tmp');
      await det.fs().write('/tmp/from-host', 'x');
      await until(w, has('create', '/tmp/from-host'));
      await w.stop();
      expect(w.endReason).toBe('stopped');
    } finally {
      await det.stop();
      await Sandbox.remove(name);
    }
  });
});
