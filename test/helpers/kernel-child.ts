// Run as a separate process by test/runtime/kernel.test.ts, with CORRAL_KERNEL set: creates a
// sandbox, runs one exec, prints {"kernel", "stdout", "code"} as one JSON line, stops it and
// returns (the process must then exit by itself); on an error prints "CODE message" on stderr
// and exits 1.
import { Sandbox } from '../../src/index.ts';
import { CorralError } from '../../src/errors.ts';

try {
  const sb = await Sandbox.builder(`kernel-child-${process.pid}`).memory(128).create();
  const r = await sb.exec('echo', ['ok']);
  process.stdout.write(`${JSON.stringify({ kernel: (await sb.info()).kernel, stdout: r.stdout, code: r.code })}\n`);
  await sb.stop();
} catch (err) {
  process.stderr.write(`${err instanceof CorralError ? err.code : 'Error'} ${(err as Error).message}\n`);
  process.exitCode = 1;
}
