// Run as a separate process by the cleanup and detached tests. argv[2] says what to do:
//   exit       create an attached sandbox, print its VM pid, return without stopping it
//              once sent SIGUSR2
//   hang       the same, then wait to be SIGKILLed
//   midcreate  print the VM pid as soon as qemu is spawned (before boot completes), then hang
//   detached   create a detached sandbox named argv[3], print its info, exit
//   builder-detached   the same through the builder's .detached().create(), printing its
//              info and this process's pid
//   cycle      create, exec, stop one sandbox, printing {"phase"} before each and the pid
//              of every qemu spawned; then wait to be SIGKILLed (faults.test.ts)
//   registry   create a sandbox from image argv[3] with Basic credentials (user argv[4],
//              password from CORRAL_TEST_SECRET: never in argv), log level trace; print
//              its VM pid and exec result, then every event as a JSON line; stop when
//              stdin closes
import { Sandbox, getDefaultSupervisor } from '../../src/index.ts';

const mode = process.argv[2];
if (mode === 'detached') {
  const sb = await Sandbox.builder(process.argv[3]!).label('made-by', 'child').createDetached();
  process.stdout.write(`${JSON.stringify(await sb.info())}\n`);
  await sb.detach();
} else if (mode === 'builder-detached') {
  const sb = await Sandbox.builder(process.argv[3]!).label('made-by', 'child').detached().create();
  process.stdout.write(`${JSON.stringify({ ...(await sb.info()), detached: sb.detached, creatorPid: process.pid })}\n`);
  await sb.detach();
} else if (mode === 'cycle') {
  const say = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`);
  getDefaultSupervisor().bus.on('sandbox.vm.spawned').subscribe((e) => say({ vmPid: e.pid }));
  setInterval(() => {}, 1000);
  say({ phase: 'create' });
  const sb = await Sandbox.builder(`child-${process.pid}`).create();
  say({ phase: 'exec' });
  await Promise.all([sb.exec('sh', ['-c', 'sleep 0.2; echo a']), sb.exec('echo', ['b'])]);
  say({ phase: 'stop' });
  await sb.stop();
  say({ phase: 'done' });
} else if (mode === 'registry') {
  const sup = getDefaultSupervisor();
  const sub = sup.events$.subscribe((e) => process.stdout.write(`${JSON.stringify({ event: e })}\n`));
  const sb = await Sandbox.builder(`child-${process.pid}`)
    .template(false)
    .logLevel('trace')
    .image(process.argv[3]!)
    .registryAuth({ kind: 'basic', username: process.argv[4]!, password: process.env.CORRAL_TEST_SECRET! })
    .create();
  const out = (await sb.exec('echo', ['hello'])).stdout;
  process.stdout.write(`${JSON.stringify({ vmPid: (await sb.info()).pid, out })}\n`);
  process.stdin.resume();
  await new Promise((r) => process.stdin.once('end', r));
  await sb.stop();
  sub.unsubscribe();
  await sup.close();
} else if (mode === 'midcreate') {
  getDefaultSupervisor().bus.on('sandbox.vm.spawned').subscribe((e) => process.stdout.write(`${JSON.stringify({ vmPid: e.pid })}\n`));
  setInterval(() => {}, 1000);
  await Sandbox.builder(`child-${process.pid}`).create();
} else {
  const sb = await Sandbox.builder(`child-${process.pid}`).create();
  const info = await sb.info();
  // exit: returns once the parent has seen its VM alive and says so (SIGUSR2), then ends
  // without stopping it. Not at once: its VM could be gone before the parent looked. The
  // handler is there before the line that lets the parent send it.
  if (mode === 'exit') {
    const hold = setInterval(() => {}, 1000);
    process.once('SIGUSR2', () => clearInterval(hold));
  }
  process.stdout.write(`${JSON.stringify({ vmPid: info.pid })}\n`);
  if (mode === 'hang') setInterval(() => {}, 1000);
}
