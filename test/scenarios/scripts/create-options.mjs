// Seed "Create with options": every builder option on one sandbox, each checked from inside.
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { Sandbox, NetworkPolicy, Volume } from 'corral';
import { check, id } from './check.mjs';

mkdirSync('./src');
writeFileSync('./src/main.py', 'print("hi")\n');
/** An HTTP server on host loopback answering `body`; the guest sees host loopback as 10.0.2.2. */
const serve = (body) =>
  new Promise((resolve) => {
    const server = createServer((_req, res) => res.end(body)).listen(0, '127.0.0.1', () => resolve(server));
  });
const allowed = await serve('allowed\n');
const denied = await serve('denied\n');
const freePort = await new Promise((resolve) => {
  const s = createServer().listen(0, '127.0.0.1', () => {
    const { port } = s.address();
    s.close(() => resolve(port));
  });
});
const volume = `${id}-data`;

const sb = await Sandbox.builder(`${id}-worker`)
  .image('corral/base')
  .memory(256)
  .cpus(2)
  .workdir('/app')
  .shell('/bin/sh')
  .env('DEBUG', 'true')
  .env('API_PORT', '8000')
  .label('team', 'scenarios')
  .volume('/app/src', (v) => v.bind('./src').readonly())
  .volume('/data', (v) => v.named(volume))
  .volume('/tmp/scratch', (v) => v.tmpfs().size(100))
  .script('hello', '#!/bin/sh\necho "hello from $0"\n')
  .patch((p) => p.text('/etc/app.conf', 'debug=1\n').mkdir('/srv/www').text('/srv/www/index.html', 'served\n').symlink('/etc/app.conf', '/etc/app.link').append('/etc/hosts', '10.0.0.1 db\n'))
  .network((n) => n.policy(NetworkPolicy.publicOnly().allow({ cidr: '127.0.0.1', protocol: 'tcp', port: allowed.address().port })))
  .port(freePort, 80)
  .bootTimeoutMs(120_000)
  .stopTimeoutMs(10_000)
  .maxDuration(3600)
  .idleTimeout(600)
  .create();
try {
  const sh = async (script) => (await sb.shell(script)).stdout.trim();
  check('memory', Number(await sh("awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo")) > 200);
  check('cpus', (await sh('nproc')) === '2');
  check('workdir', (await sh('pwd')) === '/app');
  check('env', (await sh('echo $DEBUG $API_PORT')) === 'true 8000');
  check('label', (await Sandbox.list({ labels: { team: 'scenarios' } })).some((s) => s.name === sb.name));
  check('bind volume read-only', (await sh('cat /app/src/main.py; touch /app/src/x 2>/dev/null && echo writable || echo readonly')) === 'print("hi")\nreadonly');
  check('named volume', (await sh('echo kept > /data/f && cat /data/f')) === 'kept');
  check('tmpfs volume', (await sh("df -m /tmp/scratch | awk 'NR==2 {print $2}'")) === '100');
  check('script on PATH', (await sh('hello')) === 'hello from /.msb/scripts/hello');
  check('patches', (await sh('cat /etc/app.conf /etc/app.link /srv/www/index.html; tail -n1 /etc/hosts')) === 'debug=1\ndebug=1\nserved\n10.0.0.1 db');
  const get = (server) => sh(`timeout 10 wget -q -O- http://10.0.2.2:${server.address().port}/ 2>&1; echo rc=$?`);
  const got = await get(allowed);
  check('network rule allows its port', got === 'allowed\nrc=0', JSON.stringify(got));
  const refused = await get(denied);
  check('publicOnly denies the rest of host loopback', /refused[\s\S]*rc=1$/i.test(refused), JSON.stringify(refused));
  await sb.shell('httpd -p 80 -h /srv/www');
  const res = await fetch(`http://127.0.0.1:${freePort}/index.html`);
  check('port forward', res.ok && (await res.text()) === 'served\n');
} finally {
  await sb.stop();
  await Sandbox.remove(sb.name);
  await Volume.remove(volume);
  allowed.close();
  denied.close();
}
console.log('done');
