/**
 * Prints, as one JSON line, what a fresh process reads of a sandbox's records in a state dir:
 * its replay buffer (seq, type, output bytes) and its exec log (bytes per stream).
 *
 *   node --import tsx test/helpers/readRecords.ts <stateDir> <name>
 */
import { ReplayLog } from '../../src/events/ReplayLog.ts';
import { ExecLog } from '../../src/logs/ExecLog.ts';
import { Store } from '../../src/store/Store.ts';

const [stateDir, name] = process.argv.slice(2);
const store = Store.open(stateDir!);
try {
  const replay = new ReplayLog(store).read(name!, 0);
  const logs = new ExecLog(store).read(name!);
  const bytes = (stream: string) => logs.filter((e) => e.stream === stream).reduce((n, e) => n + e.data.byteLength, 0);
  process.stdout.write(
    `${JSON.stringify({
      replay: replay.events.map((e) => [e.seq, e.type, 'data' in e && e.data instanceof Uint8Array ? e.data.byteLength : null]),
      missed: replay.missed ?? null,
      logs: { stdout: bytes('stdout'), stderr: bytes('stderr') },
    })}\n`,
  );
} finally {
  await store.close();
}
