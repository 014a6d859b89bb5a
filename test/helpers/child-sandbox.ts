// Run as a separate process by the cleanup and detached tests. argv[2] says what to do:
//   exit       create an attached sandbox, print its VM pid, return without stopping it
//   hang       the same, then wait to be SIGKILLed
//   midcreate  print the VM pid as soon as qemu is spawned (before boot completes), then hang
//   detached   create a detached sandbox named argv[3], print its info, exit
import { Sandbox, getDefaultSupervisor } from '../../src/index.ts';

const mode = process.argv[2];
if (mode === 'detached') {
  const sb = await Sandbox.builder(process.argv[3]!).label('made-by', 'child').createDetached();
  process.stdout.write(`${JSON.stringify(await sb.info())}\n`);
  await sb.detach();
} else if (mode === 'midcreate') {
  getDefaultSupervisor().bus.on('sandbox.vm.spawned').subscribe((e) => process.stdout.write(`${JSON.stringify({ vmPid: e.pid })}\n`));
  setInterval(() => {}, 1000);
  await Sandbox.builder(`child-${process.pid}`).create();
} else {
  const sb = await Sandbox.builder(`child-${process.pid}`).create();
  const info = await sb.info();
  process.stdout.write(`${JSON.stringify({ vmPid: info.pid })}\n`);
  if (mode === 'hang') setInterval(() => {}, 1000);
}
