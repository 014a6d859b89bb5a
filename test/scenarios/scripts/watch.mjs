// E2B's files.watchDir as a Node user writes it: watch a directory, make changes in the
// guest, read them with for await, leave a second watch running un-stopped, and end the
// sandbox under a waiting iteration. The process must exit 0 on its own: a watch nobody
// iterates holds nothing, a waiting iteration ends with the sandbox.
import { Sandbox } from 'corral';
import { check, id } from './check.mjs';

const sb = await Sandbox.builder(`${id}-watch`).create();
try {
  await sb.fs().mkdir('/tmp/scn');
  const w = await sb.fs().watch('/tmp/scn', { recursive: true });
  await sb.shell('mkdir /tmp/scn/sub && echo hi > /tmp/scn/sub/a && mv /tmp/scn/sub/a /tmp/scn/b');
  const seen = [];
  for await (const e of w) {
    seen.push(`${e.type} ${e.name}`);
    if (e.type === 'rename') break;
  }
  const want = ['create sub', 'create sub/a', 'write sub/a'];
  check('for await sees the changes, a rename last', want.every((x) => seen.includes(x)) && seen.at(-1) === 'rename b', seen.join(', '));

  await sb.fs().watch('/tmp'); // never stopped, never iterated: must not hold the process
  const waiting = (async () => {
    for await (const e of w) void e;
    return w.endReason;
  })();
  await sb.stop();
  const why = await waiting;
  check('a waiting iteration ends when the sandbox stops', why === 'sandbox-stopped', String(why));
} finally {
  await sb.stop();
  await Sandbox.remove(sb.name);
}
console.log('done');
