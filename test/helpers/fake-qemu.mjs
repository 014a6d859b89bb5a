#!/usr/bin/env node
// A stand-in for qemu whose "guest" is hostile (mode "deaf": it ignores SHUTDOWN and quit;
// "flood": answers an EXEC with CORRAL_FAKE_FLOOD_MIB MiB of stdout as fast as the socket
// takes it, then exits 0; "mute": never answers an EXEC; "cross-talk": answers the second
// EXEC with the first one's id; "no-umount": answers SETUP and EXEC like a well-behaved
// agent, except a SETUP that unmounts (a snapshot's first step), which it never answers;
// "no-setup": answers HELLO and then no SETUP at all). Every mode speaks the host's current
// protocol (src/agent/frame.ts, native/agent/PROTOCOL.md), unless CORRAL_FAKE_PROTOCOL names
// another, and answers a SETUP it is not there to refuse. It connects to the agent and QMP sockets
// named on its command line like qemu does, greets QMP, says HELLO like the real agent, and
// then answers the first EXEC with a frame that breaks the protocol (what a compromised
// guest kernel could write to its virtio-serial port). A real guest cannot be made to do
// this on demand: the real agent never sends malformed frames.
import { statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname } from 'node:path';

const args = process.argv.slice(2);
const chardev = (id) => {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '-chardev' && args[i + 1].includes(`id=${id},`)) return /path=([^,]+)/.exec(args[i + 1])[1];
  }
  throw new Error(`no -chardev ${id}`);
};
// "report:<file>" behaves like "mute", after writing to <file> the modes of the sockets it
// is about to connect to and of their directories (they are gone once connected).
const [mode, reportFile] = (process.env.CORRAL_FAKE_GUEST ?? 'oversized').split(/:(.*)/);
if (reportFile) {
  const modeOf = (p) => statSync(p).mode & 0o777;
  const report = Object.fromEntries(['agent', 'qmp'].flatMap((id) => [[id, modeOf(chardev(id))], [`${id}Dir`, modeOf(dirname(chardev(id)))]]));
  writeFileSync(reportFile, JSON.stringify(report));
}

const qmp = connect(chardev('qmp'));
qmp.write(JSON.stringify({ QMP: { version: {}, capabilities: [] } }) + '\n');
let qbuf = '';
qmp.on('data', (d) => {
  qbuf += d;
  let nl;
  while ((nl = qbuf.indexOf('\n')) >= 0) {
    const msg = JSON.parse(qbuf.slice(0, nl));
    qbuf = qbuf.slice(nl + 1);
    qmp.write(JSON.stringify({ return: {}, id: msg.id }) + '\n');
    if (msg.execute === 'quit' && mode !== 'deaf') process.exit(0);
  }
});

function frame(type, session, payload = Buffer.alloc(0)) {
  const h = Buffer.alloc(12);
  h.writeUInt32LE(payload.length, 0);
  h.writeUInt32LE(session, 4);
  h.writeUInt16LE(type, 8);
  return Buffer.concat([h, payload]);
}
const version = Buffer.from('fake-hostile');
const hello = Buffer.alloc(4 + 4 + version.length + 8);
// The protocol of native/agent/PROTOCOL.md this fake speaks: HELLO's version, and the EXIT
// payload (protocol 3 and up add a u32 of exit flags).
const PROTOCOL = Number(process.env.CORRAL_FAKE_PROTOCOL ?? 4);
hello.writeUInt32LE(PROTOCOL, 0);
hello.writeUInt32LE(version.length, 4);
version.copy(hello, 8);
const agent = connect(chardev('agent'));
agent.write(frame(1, 0, hello));
let abuf = Buffer.alloc(0);
const execs = [];
const i32 = (v) => {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v, 0);
  return b;
};
/** EXIT's payload: code, signal and, from protocol 3, no exit flags. */
const exit0 = () => Buffer.concat([i32(0), i32(0), ...(PROTOCOL >= 3 ? [i32(0)] : [])]);
async function flood(session) {
  // Full 1 MiB frames of a known pattern, written as fast as the host socket drains them.
  const mib = Number(process.env.CORRAL_FAKE_FLOOD_MIB ?? 256);
  const body = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < body.length; i++) body[i] = i & 0xff;
  const out = frame(4, session, body);
  agent.write(frame(6, session, i32(4242)));
  for (let i = 0; i < mib; i++) {
    if (!agent.write(out)) await new Promise((r) => agent.once('drain', r));
  }
  agent.write(frame(7, session, exit0()));
}
agent.on('data', (d) => {
  abuf = Buffer.concat([abuf, d]);
  while (abuf.length >= 12) {
    const len = abuf.readUInt32LE(0);
    if (abuf.length < 12 + len) break;
    const session = abuf.readUInt32LE(4);
    const type = abuf.readUInt16LE(8);
    const payload = abuf.subarray(12, 12 + len);
    abuf = abuf.subarray(12 + len);
    if (type === 10 && mode !== 'deaf') process.exit(0); // SHUTDOWN
    if (mode === 'no-setup') continue; // answers HELLO, then nothing: not a single SETUP
    if (type === 15) {
      // SETUP (op count, then ops, each starting with its op code; 8 = umount) → SETUP_DONE
      // (errno 0, index 0, no message); no-umount never answers an unmount.
      if (!(mode === 'no-umount' && payload.readUInt32LE(4) === 8)) agent.write(frame(16, 0, Buffer.concat([i32(0), i32(0), i32(0)])));
      continue;
    }
    if (mode === 'no-umount') {
      // EXEC → STARTED, EXIT 0, like a well-behaved agent.
      if (type === 2) agent.write(Buffer.concat([frame(6, session, i32(4242)), frame(7, session, exit0())]));
      continue;
    }
    if (type === 17 && mode === 'fs-liar') {
      // Answers an FS request with a stat record of a kind that does not exist.
      const body = Buffer.alloc(36);
      body.writeUInt32LE(9, 4);
      agent.write(frame(18, session, body));
      continue;
    }
    if (type !== 2) continue; // only EXEC provokes the attack
    execs.push(session);
    if (mode === 'flood') {
      void flood(session);
    } else if (mode === 'mute' || mode === 'report') {
      // Says nothing, ever: not STARTED, not EXIT, not even after a SIGNAL.
    } else if (mode === 'cross-talk') {
      // The first exec starts; the second is answered on the first one's id.
      agent.write(frame(6, execs.length === 1 ? session : execs[0], i32(4242)));
    } else if (mode === 'oversized') {
      // Claims a 3 GiB payload: a host that trusted the length would try to buffer it.
      const h = Buffer.alloc(12);
      h.writeUInt32LE(3 * 1024 * 1024 * 1024, 0);
      h.writeUInt32LE(session, 4);
      h.writeUInt16LE(4, 8);
      agent.write(h);
    } else if (mode === 'wrong-session') {
      agent.write(frame(6, session + 1000, Buffer.alloc(4)));
    } else {
      agent.write(Buffer.from('\xde\xad\xbe\xef garbage that is no frame at all', 'latin1'));
    }
  }
});
// Like qemu with -no-reboot: stay up until told to quit or killed.
setInterval(() => {}, 1 << 30);
