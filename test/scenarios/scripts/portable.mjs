// microsandbox 0.7's portable snapshots, as a Node user writes it: snapshot a running sandbox,
// export it to one file, import it under another state dir (another host's supervisor), and
// start a sandbox from it there that still has its file; a corrupt archive is refused.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox, Snapshot, Supervisor } from 'corral';
import { check, id, rejectsWith } from './check.mjs';

const otherHost = mkdtempSync(join(tmpdir(), `${id}-host-`));
const there = new Supervisor({ stateDir: otherHost });
const file = join(otherHost, 'snap.corral');
try {
  const sb = await Sandbox.builder(`${id}-port`).image('corral/base').create();
  await sb.fs().write('/root/hello.txt', 'carried over\n');
  await sb.snapshot(`${id}-snap`);
  await sb.stop();
  const { bytes } = await Sandbox.exportSnapshot(`${id}-snap`, file);
  check('exported to one file', bytes > 0);
  const meta = await Sandbox.importSnapshot(file, { name: 'carried', supervisor: there });
  check('imported on the other host', meta.name === 'carried');
  const copy = await Sandbox.builder(`${id}-copy`).fromSnapshot('carried').supervisor(there).create();
  check('a sandbox from it has the file', (await copy.exec('cat', ['/root/hello.txt'])).stdout === 'carried over\n');
  await copy.stop();
  const bad = join(otherHost, 'bad.corral');
  const b = readFileSync(file);
  b[b.length >> 1] ^= 1;
  writeFileSync(bad, b);
  check('a corrupt archive is refused', (await rejectsWith('E_SNAPSHOT_CORRUPT', () => Sandbox.importSnapshot(bad, { name: 'bad', supervisor: there })))?.code === 'E_SNAPSHOT_CORRUPT');
  await Sandbox.remove(copy.name, { supervisor: there });
  await Sandbox.remove(sb.name);
  await Snapshot.remove(`${id}-snap`);
} finally {
  await there.close();
  rmSync(otherHost, { recursive: true, force: true });
}
console.log('done');
