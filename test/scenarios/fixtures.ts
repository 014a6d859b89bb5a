/**
 * What the scenarios expect (their exact output lines) and the few things a scenario needs
 * from outside (a loopback registry, the fake qemu): shared by the vitest files here and by
 * `npm run stress`.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startRegistry, testImages, type TestRegistry } from '../image/helpers/registry.ts';

const FAKE_QEMU = fileURLToPath(new URL('../helpers/fake-qemu.mjs', import.meta.url));

/** Each scenario's stdout, line by line, when everything it checks holds. */
export const EXPECTED: Readonly<Record<string, readonly string[]>> = {
  'create-options': [
    'ok memory', 'ok cpus', 'ok workdir', 'ok env', 'ok label', 'ok bind volume read-only', 'ok named volume',
    'ok tmpfs volume', 'ok script on PATH', 'ok patches', 'ok network rule allows its port',
    'ok publicOnly denies the rest of host loopback', 'ok port forward', 'done',
  ],
  'config-json': ['ok config is plain JSON', 'ok build boots nothing', 'ok created from the parsed config', 'done'],
  replace: ['ok conflict without replace', 'ok fresh sandbox after replace', 'ok one record', 'done'],
  'pull-never': [
    'ok never on an uncached ref fails E_IMAGE_NOT_CACHED', 'ok nothing left of the failed create', 'ok if-missing pulls it',
    'ok never on a cached ref boots', 'done',
  ],
  lifecycle: [
    'ok stop', 'ok start keeps what was written before stop', 'ok pause', 'ok resume carries the running exec on',
    'ok get after detach reaches the running sandbox', 'ok list', 'ok kill', 'ok drain refuses new execs',
    'ok drain lets the running exec finish', 'ok drain ends stopped/drained', 'ok remove', 'done',
  ],
  detached: [
    'ok detached', 'ok second process reconnects', "ok second process sees the first one's file", 'ok second process stops it',
    'ok second process removes it', 'ok second process exit code 0', 'done',
  ],
  'graceful-stop': ['ok stop with timeoutMs escalates to kill', 'ok an aborted signal escalates to kill', 'done'],
  jail: [
    'ok jailed, with no wall missing', 'ok its qemu runs as its own uid, without capabilities',
    'ok its cgroup limits memory to the guest plus a bounded overhead', 'ok a fork runs jailed, as another uid',
    'ok the fork has its parent state', 'ok its VM process is gone after stop',
    'ok a sandbox with a NIC has a network namespace of its own', 'ok its published port serves the host',
    'ok a detached sandbox runs jailed too', 'done',
  ],
  policies: [
    'ok busy is not idle', 'ok max duration drains it', 'ok idle timeout drains it',
    'ok an idle pause is resumed by the next exec', 'ok setMaxDuration ends it from now', 'done',
  ],
  streams: [
    'ok a stream read late gets every byte', 'ok a stream piped into a slow Writable delivers every byte',
    'ok exec collects output past the window', 'ok awaiting only exited settles for a command that prints 8 MiB',
    'ok an endless stream nobody reads ends with destroy()', 'done',
  ],
  background: [
    'ok the first client exits on its own while the command runs', 'ok the command is listed',
    'ok attached, it reads everything from the start and its stdin reaches the command', 'done',
  ],
  watch: ['ok for await sees the changes, a rename last', 'ok a waiting iteration ends when the sandbox stops', 'done'],
  portable: ['ok exported to one file', 'ok imported on the other host', 'ok a sandbox from it has the file', 'ok a corrupt archive is refused', 'done'],
  cancel: [
    'ok a create past its timeoutMs rejects E_TIMEOUT and leaves a stopped record', 'ok wait with timeoutMs rejects E_TIMEOUT and the sandbox runs on',
    'ok an aborted signal rejects E_ABORTED with its reason', 'ok a bad timeoutMs names the option', 'ok destroy() kills a running exec',
    'ok close() kills an exec still running after its timeoutMs', 'ok await using stops the sandbox at the end of its block',
    'ok destroy() kills, and again answers the stopped record', 'done',
  ],
};

/** Starts what scenarios need from outside, on first use; `close()` ends it. */
export class ScenarioFixtures {
  #registry: Promise<TestRegistry> | undefined;

  /** The extra environment of one run of `name`. */
  async envFor(name: string): Promise<Record<string, string>> {
    if (name === 'graceful-stop') return { SCENARIO_FAKE_QEMU: FAKE_QEMU };
    if (name !== 'pull-never') return {};
    const registry = await (this.#registry ??= startRegistry('none'));
    // A tag of its own per run: "not cached" must hold in a state dir shared by many runs.
    const tag = `t${randomBytes(6).toString('hex')}`;
    await registry.push(join(testImages().dir, 'busybox'), 'scenarios/busybox', tag);
    return { SCENARIO_REGISTRY: registry.host, SCENARIO_TAG: tag };
  }

  async close(): Promise<void> {
    const registry = this.#registry;
    this.#registry = undefined;
    if (registry) await (await registry).close();
  }
}
