// Exec output streams as a Node user consumes them: read late, piped into a Writable, collected
// by exec(), only its exit awaited, abandoned and destroyed. Output is flow-controlled (a stream nobody reads holds its
// command in the guest at a 2 MiB window), so every call here must settle and every byte
// arrive; the process must exit 0 on its own with nothing left running.
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Sandbox } from 'corral';
import { check, id } from './check.mjs';

const MiB = 1024 * 1024;
const sb = await Sandbox.builder(`${id}-streams`).create();
try {
  const late = await sb.execStream('sh', ['-c', `head -c ${8 * MiB} /dev/zero; echo end >&2`]);
  for (let i = 0; i < 3; i++) await sb.ping();
  let bytes = 0;
  let stderr = '';
  let code;
  for await (const item of late) {
    if (item.type === 'stdout') bytes += item.data.byteLength;
    else if (item.type === 'stderr') stderr += Buffer.from(item.data).toString();
    else if (item.type === 'exited') code = item.code;
  }
  check('a stream read late gets every byte', bytes === 8 * MiB && stderr === 'end\n' && code === 0, JSON.stringify({ bytes, stderr, code }));

  let piped = 0;
  const stream = await sb.execStream('head', ['-c', String(16 * MiB), '/dev/zero']);
  const chunks = Readable.from((async function* () {
    for await (const item of stream) if (item.type === 'stdout') yield item.data;
  })());
  // A consumer slower than the guest: each chunk waits a turn of the event loop.
  await pipeline(chunks, new Writable({ write: (c, _e, cb) => void setImmediate(() => ((piped += c.length), cb())) }));
  check('a stream piped into a slow Writable delivers every byte', piped === 16 * MiB && (await stream.exited).code === 0, String(piped));

  const r = await sb.exec('head', ['-c', String(6 * MiB), '/dev/zero']);
  check('exec collects output past the window', r.code === 0 && r.stdoutBytes.length === 6 * MiB, String(r.stdoutBytes.length));

  const unread = await sb.execStream('head', ['-c', String(8 * MiB), '/dev/zero']);
  const onlyExit = await unread.exited;
  check('awaiting only exited settles for a command that prints 8 MiB', onlyExit.code === 0, JSON.stringify(onlyExit));

  const endless = await sb.execStream('yes');
  for (let i = 0; i < 3; i++) await sb.ping();
  const ended = await endless.destroy();
  check('an endless stream nobody reads ends with destroy()', ended.signal === 9, JSON.stringify(ended));
} finally {
  await sb.stop();
  await Sandbox.remove(sb.name);
}
console.log('done');
