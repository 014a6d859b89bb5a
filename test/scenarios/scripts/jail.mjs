// A service embedding corral checks what its untrusted code's VM is confined to (issue #20):
// the VM process is jailed, as a uid of its own with no capabilities, in a cgroup with
// limits; a fork of it is jailed too, as another uid; a sandbox with a NIC is in a network
// namespace of its own; and a detached sandbox's VM is jailed as well.
import { Sandbox } from 'corral';
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import { createServer } from 'node:net';
import { check, id } from './check.mjs';

/** The jail as info() says, and as /proc says of the VM process. */
async function jailOf(sb) {
  const info = await sb.info();
  const status = readFileSync(`/proc/${info.pid}/status`, 'utf8');
  const field = (k) => new RegExp(`^${k}:\\s+(.*)$`, 'm').exec(status)?.[1];
  return { info, jail: info.jail, uid: Number(field('Uid')?.split(/\s+/)[0]), capEff: field('CapEff'), noNewPrivs: field('NoNewPrivs') };
}

const sb = await Sandbox.builder(`${id}-jail`).memory(128).create();
let fork;
try {
  const a = await jailOf(sb);
  check('jailed, with no wall missing', a.jail?.jailed === true && a.jail.missing.length === 0 && a.jail.netns === true, JSON.stringify(a.jail));
  check('its qemu runs as its own uid, without capabilities', a.uid === a.jail.uid && a.uid > 0 && /^0+$/.test(a.capEff ?? '') && a.noNewPrivs === '1', JSON.stringify(a));
  check('its cgroup limits memory to the guest plus a bounded overhead', a.jail.cgroup !== null && a.jail.limits.memoryMaxBytes > 128 * 2 ** 20 && a.jail.limits.memoryMaxBytes <= (128 + 512) * 2 ** 20, JSON.stringify(a.jail.limits));
  await sb.shell('echo parent > /root/mark && sync');
  fork = await sb.fork(`${id}-jail-fork`);
  const f = await jailOf(fork);
  check('a fork runs jailed, as another uid', f.jail?.jailed === true && f.uid === f.jail.uid && f.uid !== a.uid, JSON.stringify(f.jail));
  check('the fork has its parent state', (await fork.shell('cat /root/mark')).stdout === 'parent\n');
  await fork.stop();
  await sb.stop();
  check('its VM process is gone after stop', !existsSync(`/proc/${a.info.pid}`) && !existsSync(`/proc/${f.info.pid}`));
} finally {
  await fork?.kill();
  await sb.kill();
  if (fork) await Sandbox.remove(fork.name);
  await Sandbox.remove(sb.name);
}

// A sandbox with a NIC: its qemu in a network namespace of its own, its published port
// served from outside it (slirp4netns's host forward).
const probe = createServer();
await new Promise((r) => probe.listen(0, '127.0.0.1', r));
const hostPort = probe.address().port;
await new Promise((r) => probe.close(r));
const n = await Sandbox.builder(`${id}-jail-nic`).memory(128).port(hostPort, 8080).create();
try {
  const j = await jailOf(n);
  check('a sandbox with a NIC has a network namespace of its own', j.jail?.netns === true && j.jail.missing.length === 0 && readlinkSync(`/proc/${j.info.pid}/ns/net`) !== readlinkSync('/proc/self/ns/net'), JSON.stringify(j.jail));
  await n.shell('mkdir -p /www && echo guest-ok > /www/index.html && httpd -p 8080 -h /www');
  const res = await fetch(`http://127.0.0.1:${hostPort}/index.html`);
  check('its published port serves the host', (await res.text()) === 'guest-ok\n');
} finally {
  await n.kill();
  await Sandbox.remove(n.name);
}

const d = await Sandbox.builder(`${id}-jail-detached`).memory(128).createDetached();
try {
  const j = await jailOf(d);
  check('a detached sandbox runs jailed too', j.jail?.jailed === true && j.uid === j.jail.uid && /^0+$/.test(j.capEff ?? ''), JSON.stringify(j.jail));
} finally {
  await d.stop();
  await Sandbox.remove(d.name);
}
console.log('done');
