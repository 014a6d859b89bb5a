/**
 * One qemu microVM process: spawn, attach the agent and QMP, supervise, end.
 *
 * Ownership rules that keep the host clean:
 * - qemu is started through the jail (src/vm/jail.ts), or `setpriv --pdeathsig KILL` where
 *   the host cannot jail it: either way, if the thread that spawned it (the sandbox worker)
 *   or its process dies, the kernel kills qemu: an attached VM never outlives its owner,
 *   even after SIGKILL of the host process.
 * - the agent and QMP sockets live in a private temp dir (the VM's run dir, in its jail);
 *   their files are removed as soon as qemu has connected to both (qemu is the connecting
 *   side), a save's socket as soon as qemu has connected to it, and the dir when qemu exits.
 * - migrations never spawn anything (qemu runs with spawning denied): a save streams to a
 *   socket the host listens on, a restore reads a file descriptor qemu inherits.
 * - {@link Vm.exited} always settles, after the jail's cgroup and uid are given back;
 *   {@link Vm.kill} always ends the process.
 */

import { childEnv } from '../runtime/actorEnv.ts';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, createWriteStream, openSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { AgentClient, type AgentHello } from '../agent/AgentClient.ts';
import type { Accel } from '../bus/events.ts';
import { CorralError } from '../errors.ts';
import { processAlive } from '../runtime/process.ts';
import { watchGuestEnd, type GuestEnd } from './guestEnd.ts';
import { QmpClient } from './QmpClient.ts';
import { qemuArgs, type QemuArgsInput } from './qemuArgs.ts';
import { logFailure } from '../runtime/log.ts';
import { SlirpForwards } from './slirpApi.ts';
import { prepareJail, touchFile, type Jail, type JailPath, type JailStatus } from './jail.ts';
import { qcow2Backing } from './qcow2.ts';
import { deviceSections, readRamSection, writeStream } from './migrationStream.ts';
import { privatePages } from './privatePages.ts';

/** How a VM process ended. */
export interface VmExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  /** Its cgroup's OOM killer killed it (it grew past its memory limit). */
  readonly oomKilled?: boolean;
}

/** Options of {@link Vm.boot}. */
export interface VmBootOptions extends Omit<QemuArgsInput, 'agentSocket' | 'qmpSocket'> {
  readonly qemu: string;
  /** How long to wait for the agent's HELLO. Default 60 000 ms (TCG on a loaded host is slow). */
  readonly bootTimeoutMs?: number;
  readonly signal?: AbortSignal;
  /** Called with the pid as soon as qemu is spawned. */
  readonly onSpawn?: (pid: number) => void;
  /**
   * A command that runs first and then execs its arguments (the setpriv + qemu argv), e.g.
   * to move the process into a cgroup before qemu opens any socket (src/guestenv/netfilter.ts).
   * Used only where qemu is not jailed; a jail gets {@link netCgroup} instead.
   */
  readonly wrap?: readonly string[];
  /** The network policy's cgroup (joined before qemu starts) and the resolv.conf slirp reads. */
  readonly netCgroup?: { readonly dir: string; readonly resolvConf: string };
  /**
   * Restore instead of booting: the migration state file saved by {@link Vm.saveTo} and the
   * HELLO its agent sent at the time. Needs `incoming: true` and the same machine shape.
   */
  readonly restore?: {
    readonly stateFile: string;
    readonly hello: AgentHello;
    /** Template restores: RAM comes from the shared file, not the stream. Default true. */
    readonly ignoreShared?: boolean;
    /** Exec sessions that were live at the save: their late output is dropped. */
    readonly orphanSessions?: readonly number[];
  };
}

/** Bytes of console output kept for error messages. */
const CONSOLE_TAIL = 16 * 1024;

/**
 * @example
 * const vm = await Vm.boot({ qemu, kernel, initramfs, memoryMib: 256, cpus: 1, accel: 'tcg', lower, hostname: 'a' });
 * vm.agent.exec(…); await vm.shutdown();
 */
export class Vm {
  readonly #child: ChildProcess;
  #console = '';
  #exit: VmExit | undefined;
  readonly #exited: Promise<VmExit>;
  #guestEnd: GuestEnd | undefined;
  readonly #guestEnded: Promise<GuestEnd>;
  agent!: AgentClient;
  qmp!: QmpClient;
  hello!: AgentHello;
  readonly accel: Accel;
  /** What the VM process's jail is made of (src/vm/jail.ts). */
  readonly jail: JailStatus;
  #qemuPid: number | undefined;
  /** When each step of the boot ended, in ms from its start (for the benches: where a boot's time goes). */
  readonly bootPhases: Record<'jail' | 'spawned' | 'pid' | 'connected' | 'restored' | 'hello', number> = { jail: 0, spawned: 0, pid: 0, connected: 0, restored: 0, hello: 0 };
  readonly #jail: Jail;
  readonly #runDir: string;

  private constructor(child: ChildProcess, accel: Accel, jail: Jail, runDir: string) {
    this.#child = child;
    this.accel = accel;
    this.jail = jail.status;
    this.#jail = jail;
    this.#runDir = runDir;
    child.stdout?.setEncoding('utf8');
    child.stderr?.setEncoding('utf8');
    const keep = (s: string) => {
      this.#console = (this.#console + s).slice(-CONSOLE_TAIL);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    this.#guestEnded = new Promise((resolve) => {
      child.stdout?.on('data', watchGuestEnd((how) => resolve((this.#guestEnd = how))));
    });
    // Settles only once the console is read to its end: a guest that reset or panicked has
    // printed why before qemu exited, and whoever awaits the exit can tell which.
    const stdoutDone = new Promise<void>((resolve) => {
      if (!child.stdout) return resolve();
      child.stdout.once('close', resolve);
    });
    // Settles once the run dir, the cgroup and the uid are given back too: whoever sees the
    // exit may start the next VM of this sandbox.
    const cleanup = () => Promise.all([rm(runDir, { recursive: true, force: true }).catch(logFailure(`removing ${runDir}`)), jail.release()]);
    this.#exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        void stdoutDone.then(cleanup).then(() => {
          this.#exit = { code, signal, ...(jail.oomKilled() ? { oomKilled: true } : {}) };
          resolve(this.#exit);
        });
      });
      child.once('error', () => {
        void cleanup().then(() => {
          this.#exit ??= { code: null, signal: null };
          resolve(this.#exit);
        });
      });
    });
  }

  /** The qemu process id (as the host sees it; a jailed qemu is PID 1 of its own namespace). */
  get pid(): number {
    return this.#qemuPid ?? this.#child.pid ?? -1;
  }

  /** Settles when the qemu process has ended, however it ended. */
  get exited(): Promise<VmExit> {
    return this.#exited;
  }

  /**
   * Settles when the guest's kernel says it powered off, halted, reset or panicked (its
   * console line, see guestEnd.ts); never for a VM that does none of these.
   */
  get guestEnded(): Promise<GuestEnd> {
    return this.#guestEnded;
  }

  /** How the guest ended itself, once {@link guestEnded} has settled. */
  get guestEnd(): GuestEnd | undefined {
    return this.#guestEnd;
  }

  /** True once the process has ended. */
  get isExited(): boolean {
    return this.#exit !== undefined;
  }

  /** The last ~16 KiB of the serial console and qemu's stderr. */
  get consoleTail(): string {
    return this.#console;
  }

  /** Spawns qemu and waits for the agent's HELLO. On any failure nothing is left running. */
  static async boot(opts: VmBootOptions): Promise<Vm> {
    // The owner's pid in the name lets a later process sweep dirs left by one that died mid-boot.
    const t0 = performance.now();
    const phases: Partial<Vm['bootPhases']> = {};
    const mark = (phase: keyof Vm['bootPhases']) => (phases[phase] = performance.now() - t0);
    const dir = await mkdtemp(join(tmpdir(), `corral-run-${process.pid}-`));
    const agentPath = join(dir, 'a.sock');
    const qmpPath = join(dir, 'q.sock');
    const servers: Server[] = [];
    let vm: Vm | undefined;
    let jail: Jail | undefined;
    // The incoming migration stream, as fd 4 of qemu: it reads it with no process of its own.
    let stateFd: number | undefined;
    try {
      const agentConn = listenOnce(agentPath, servers);
      const qmpConn = listenOnce(qmpPath, servers);
      await Promise.all(servers.map((s) => new Promise<void>((res, rej) => s.once('listening', res).once('error', rej))));
      if (opts.memoryFile?.share) touchFile(opts.memoryFile.path);
      if (opts.restore) stateFd = openSync(opts.restore.stateFile, 'r');
      jail = await prepareJail({
        memoryMib: opts.memoryMib,
        cpus: opts.cpus,
        accel: opts.accel,
        paths: jailPaths(opts, dir),
        privateRamFile: opts.memoryFile && !opts.memoryFile.share ? opts.memoryFile.path : undefined,
        nic: opts.net !== undefined && !opts.net.isolated,
        // Beside the run dir, not in it: the run dir is in the jail, and qemu must not reach it.
        nicApiSocket: `${dir}.net.sock`,
        proc: (opts.shares?.length ?? 0) > 0,
        cleanup: [dir],
        netCgroupDir: opts.netCgroup?.dir,
        resolvConf: opts.netCgroup?.resolvConf,
        keepFd: stateFd === undefined ? undefined : STATE_FD,
      });
      mark('jail');
      const nic = jail.nic;
      // A NIC served by slirp4netns: qemu's end is a tap, the forwards are slirp4netns's.
      const net = opts.net && nic ? { ...opts.net, hostForwards: [], tapFd: nic.tapFd } : opts.net;
      const args = qemuArgs({ ...opts, net, agentSocket: agentPath, qmpSocket: qmpPath });
      const argv = jail.status.jailed ? [...jail.argv, opts.qemu, ...args] : [...(opts.wrap ?? []), 'setpriv', '--pdeathsig', 'KILL', '--', opts.qemu, ...args];
      const child = spawn(argv[0]!, argv.slice(1), {
        // The creating actor's CORRAL_* variables (the fake qemu reads its mode from them).
        env: childEnv(),
        stdio: ['ignore', 'pipe', 'pipe', jail.pidFd === undefined ? 'ignore' : 'pipe', stateFd ?? 'ignore'],
      });
      vm = new Vm(child, opts.accel, jail, dir);
      const spawned = vm;
      await new Promise<void>((res, rej) => {
        child.once('spawn', res);
        child.once('error', (e) => rej(new CorralError('E_BOOT_FAILED', `could not start qemu: ${e.message}`, { cause: e })));
      });
      mark('spawned');
      if (stateFd !== undefined) closeSync(stateFd);
      stateFd = undefined;
      let netReady: Promise<boolean> | undefined;
      if (jail.pidFd !== undefined) {
        const launch = readLaunch(child.stdio[jail.pidFd] as Socket);
        netReady = launch.net;
        const pid = await Promise.race([launch.pid, vm.exited.then(() => undefined)]);
        if (pid === undefined) throw new CorralError('E_BOOT_FAILED', `the VM's jail did not start qemu: ${lastLines(spawned.consoleTail)}`);
        vm.#qemuPid = pid;
      }
      mark('pid');
      opts.onSpawn?.(vm.pid);
      // slirp4netns comes up while qemu starts: its forwards are added then, and the boot
      // waits for them before it ends.
      const slirp = nic ? (vm.#slirp = new SlirpForwards(nic.apiSocket)) : undefined;
      const netUp = slirp
        ? (async () => {
            if (!(await netReady)) {
              await vm!.exited;
              throw new CorralError('E_BOOT_FAILED', `the VM's network (slirp4netns) did not start: ${lastLines(spawned.consoleTail)}`);
            }
            for (const f of opts.net?.hostForwards ?? []) {
              const refused = await slirp.add(f.hostPort, f.guestPort);
              if (refused) throw new CorralError('E_INVALID_OPTION', `invalid option port.hostPort: 127.0.0.1:${f.hostPort} cannot be published (${refused}; in use?)`, { details: { option: 'port.hostPort', port: f.hostPort } });
            }
          })()
        : Promise.resolve();
      netUp.catch(() => {}); // awaited below; a boot that fails first leaves it to nobody

      const exitedEarly = vm.exited.then((x) => {
        throw new CorralError('E_BOOT_FAILED', `qemu exited during boot (${describeExit(x)}): ${lastLines(spawned.consoleTail)}`, {
          details: { exitCode: x.code, signal: x.signal },
        });
      });
      const timeoutMs = opts.bootTimeoutMs ?? 60_000;
      const deadline = rejectAfter(timeoutMs, opts.signal, () => `no agent HELLO within ${timeoutMs} ms: ${lastLines(spawned.consoleTail)}`);
      try {
        const [agentSock, qmpSock] = await Promise.race([Promise.all([agentConn, qmpConn]), exitedEarly, deadline.promise]);
        mark('connected');
        // Both connected: the socket files have served their purpose (the dir stays for saves).
        await Promise.all([rm(agentPath, { force: true }), rm(qmpPath, { force: true })]);
        vm.agent = new AgentClient(agentSock, opts.restore ? { hello: opts.restore.hello, orphanSessions: opts.restore.orphanSessions ?? [] } : {});
        vm.qmp = new QmpClient(qmpSock);
        if (opts.restore) {
          await Promise.race([vm.qmp.ready, exitedEarly, deadline.promise]);
          await Promise.race([vm.#restore(opts.restore.ignoreShared ?? true), exitedEarly, deadline.promise]);
          mark('restored');
        }
        vm.hello = await Promise.race([vm.agent.ready, exitedEarly, deadline.promise]);
        await Promise.race([netUp, deadline.promise]);
        mark('hello');
        Object.assign(vm.bootPhases, phases);
        await Promise.race([vm.qmp.ready, exitedEarly, deadline.promise]);
        vm.#ready = true;
      } finally {
        deadline.cancel();
        exitedEarly.catch(() => {}); // raced above; after a successful boot it may reject later, with nobody left to care
      }
      return vm;
    } catch (err) {
      if (vm) {
        // The agent's socket closing is usually the first sign of a guest that died: give qemu
        // a moment to exit on its own, so the error can say how and show the console.
        const exit = await Promise.race([vm.exited, delay(1000).then(() => undefined)]);
        vm.kill();
        const x = exit ?? (await vm.exited);
        if (err instanceof CorralError && err.code === 'E_VM_CRASHED') {
          throw new CorralError('E_VM_CRASHED', `${err.message} during boot; qemu ${exit ? describeExit(x) : 'was killed'}: ${lastLines(vm.consoleTail)}`, { cause: err });
        }
        // qemu ended on its own (a QMP or agent connection closing said so first): say how, and what it printed.
        if (exit && err instanceof CorralError) {
          throw new CorralError(err.code, `${err.message}; qemu ${describeExit(x)}: ${lastLines(vm.consoleTail)}`, { cause: err, details: err.details });
        }
      }
      throw err instanceof CorralError ? err : new CorralError('E_BOOT_FAILED', `VM boot failed: ${(err as Error).message}`, { cause: err });
    } finally {
      for (const s of servers) s.close();
      if (stateFd !== undefined) closeSync(stateFd);
      // A VM that came up keeps its run dir until it exits; else nothing may be left.
      if (!vm || vm.isExited || !vm.#ready) {
        if (vm) vm.kill();
        await vm?.exited;
        if (!vm) {
          await rm(dir, { recursive: true, force: true });
          await jail?.release();
        }
      }
    }
  }

  #ready = false;
  /** The host forwards of a NIC that slirp4netns serves; undefined where qemu's own slirp does. */
  #slirp: SlirpForwards | undefined;

  /**
   * Forwards 127.0.0.1:hostPort on the host to the guest's port (the NIC's user-mode network
   * does). Returns the refusal (the port is taken, say), or undefined once it is there.
   */
  async addHostForward(hostPort: number, guestPort: number): Promise<string | undefined> {
    if (this.#slirp) return this.#slirp.add(hostPort, guestPort);
    // qemu's monitor answers a refused forward with text, not an error.
    const out = (await this.qmp.execute<string>('human-monitor-command', { 'command-line': `hostfwd_add net0 tcp:127.0.0.1:${hostPort}-:${guestPort}` })).trim();
    return out || undefined;
  }

  /** Removes the forward of 127.0.0.1:hostPort. Returns why not if there is none. */
  async removeHostForward(hostPort: number): Promise<string | undefined> {
    if (this.#slirp) return (await this.#slirp.remove(hostPort)) ? undefined : 'no such forward';
    const out = (await this.qmp.execute<string>('human-monitor-command', { 'command-line': `hostfwd_remove net0 tcp:127.0.0.1:${hostPort}` })).trim();
    return /removed/.test(out) ? undefined : out || 'qemu said nothing';
  }

  /**
   * Saves the VM's state to `stateFile` and leaves it paused. With `ignoreShared` (a VM whose
   * RAM is a shared file) the RAM stays in that file and the state file holds only devices.
   */
  async saveTo(stateFile: string, options: { ignoreShared: boolean }): Promise<void> {
    await this.qmp.execute('stop');
    await this.qmp.execute('migrate-set-capabilities', {
      capabilities: [{ capability: 'x-ignore-shared', state: options.ignoreShared }],
    });
    // qemu 7.2 throttles a migration to 128 MiB/s by default (max-bandwidth), even of a
    // stopped VM into a local socket: the 31.5 MiB stream of a 256 MiB sandbox took ~260 ms,
    // ~125 ms without the limit (2026-12-08). The VM is stopped, so there is no downtime to
    // bound: a limit past the whole save lets qemu go straight to completion, with no
    // iterations that re-scan the dirty log.
    await this.qmp.execute('migrate-set-parameters', { 'max-bandwidth': SAVE_BANDWIDTH, 'downtime-limit': SAVE_DOWNTIME_MS });
    // qemu may not spawn (`cat`): it connects to a socket in its run dir, and this process
    // writes what arrives to the file.
    const path = join(this.#runDir, `m${Date.now().toString(36)}.sock`);
    const server = createServer();
    const written = new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.once('connection', (sock) => {
        server.close();
        void rm(path, { force: true }).catch(logFailure(`removing ${path}`));
        pipeline(sock, createWriteStream(stateFile, { mode: 0o600 })).then(resolve, reject);
      });
    });
    written.catch(() => {}); // awaited below, after the migration's own outcome
    try {
      await new Promise<void>((resolve, reject) => server.once('listening', resolve).once('error', reject).listen(path));
      chmodSync(path, 0o600);
      await this.qmp.execute('migrate', { uri: `unix:${path}` });
      await this.#migrationDone();
      await written;
    } finally {
      server.close();
      await rm(path, { force: true });
    }
  }

  /**
   * Saves a VM that runs on a template's RAM file mapped copy-on-write (`base.memFile`,
   * its `memoryFile` with `share: false`) as the pages it changed and its devices only
   * (src/vm/migrationStream.ts), and leaves it paused. The stream restores onto the same
   * file mapped privately (`memoryFile: { path: base.memFile, share: false }`, `ignoreShared:
   * false`). Returns how many changed pages it holds.
   */
  async saveDelta(stateFile: string, base: { readonly memFile: string; readonly stateFile: string }): Promise<{ pages: number }> {
    await this.qmp.execute('stop');
    // The device sections as qemu saves them, with no RAM (qemu opens the file: it is in its run dir).
    const devFile = join(this.#runDir, `d${Date.now().toString(36)}.state`);
    try {
      await this.qmp.execute('xen-save-devices-state', { filename: devFile, live: false });
      const pages = privatePages(this.pid, base.memFile, statSync(base.memFile).size);
      const [devices, template] = [readFileSync(devFile), readFileSync(base.stateFile)];
      const tpl = readRamSection(template);
      const fileBlock = tpl.blocks.find((b) => b.name === RAM_BLOCK);
      if (!fileBlock) throw new CorralError('E_SNAPSHOT', `the template's stream ${base.stateFile} has no RAM block "${RAM_BLOCK}"`);
      const out = writeStream({
        machine: tpl.machine,
        blocks: tpl.blocks,
        // The template's other blocks (the BIOS ROM) as it saved them: a restoring qemu does
        // not fill ROMs itself, it waits for the stream.
        pages: [...tpl.pages.filter((p) => p.block !== RAM_BLOCK), ...pages.map((p) => ({ block: RAM_BLOCK, offset: p.offset, data: p.data }))],
        devices: deviceSections(devices),
      });
      await writeFile(stateFile, out, { mode: 0o600 });
      return { pages: pages.length };
    } finally {
      await rm(devFile, { force: true });
    }
  }

  async #restore(ignoreShared: boolean): Promise<void> {
    await this.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: ignoreShared }] });
    // The state file is qemu's fd 4, opened by this process at the spawn.
    await this.qmp.execute('migrate-incoming', { uri: `fd:${STATE_FD}` });
    await this.#migrationDone();
    await this.qmp.execute('cont');
  }

  async #migrationDone(timeoutMs = 30_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      if (performance.now() > deadline) throw new CorralError('E_TIMEOUT', `migration did not complete within ${timeoutMs} ms`);
      const st = await this.qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
      if (st.status === 'completed') return;
      if (st.status === 'failed' || st.status === 'cancelled') {
        throw new CorralError('E_QMP', `migration ${st.status}: ${st['error-desc'] ?? 'no detail'}`);
      }
      await new Promise((r) => setTimeout(r, 2));
    }
  }

  /** Freezes the vCPUs (QMP `stop`). */
  async pause(): Promise<void> {
    await this.qmp.execute('stop');
  }

  /** Thaws the vCPUs (QMP `cont`). */
  async resume(): Promise<void> {
    await this.qmp.execute('cont');
  }

  /**
   * Graceful end: the agent syncs and resets the guest (qemu exits); after `timeoutMs` QMP `quit`; after
   * another second SIGKILL. Resolves with how the process ended.
   */
  async shutdown(timeoutMs = 10_000): Promise<VmExit> {
    if (this.#exit) return this.#exit;
    this.agent?.shutdown();
    if (await settlesWithin(this.#exited, timeoutMs)) return this.#exited;
    // A QMP that fails here (the VM exiting meanwhile, a hung monitor) is what the kill below is for.
    await this.qmp?.execute('quit').catch(logFailure('QMP quit'));
    if (await settlesWithin(this.#exited, 1000)) return this.#exited;
    this.kill();
    return this.#exited;
  }

  /**
   * Ends a VM whose guest has ended itself (its CPUs halted: nothing left to ask it): QMP
   * `quit`, so qemu flushes its disks, then SIGKILL after `timeoutMs`.
   */
  async end(timeoutMs = 1000): Promise<VmExit> {
    if (this.#exit) return this.#exit;
    await this.qmp?.execute('quit').catch((err: Error) => {
      // qemu may already be exiting (a reset), closing QMP under the command.
      if (!this.isExited) this.#console = `${this.#console}\n[host] QMP quit failed: ${err.message}`.slice(-CONSOLE_TAIL);
    });
    if (await settlesWithin(this.#exited, timeoutMs)) return this.#exited;
    this.kill();
    return this.#exited;
  }

  /** SIGKILL. Idempotent; safe after exit. */
  kill(): void {
    if (this.#exit) return;
    // setpriv has exec'd into qemu, so the pid is qemu's own. A jail's launcher waits for its
    // qemu and exits after it: killing qemu itself means the exit is seen once qemu is gone
    // (before its pid is known, the launcher's death takes qemu with it: pdeathsig).
    if (this.#qemuPid !== undefined && this.#qemuPid !== this.#child.pid) {
      try {
        process.kill(this.#qemuPid, 'SIGKILL');
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err; // gone already: the launcher is next
      }
    }
    this.#child.kill('SIGKILL');
  }

  /** Closes the host ends of the sockets (after the process ended). */
  closeChannels(reason?: Error): void {
    this.agent?.close(reason);
    this.qmp?.close();
  }
}

function listenOnce(path: string, servers: Server[]): Promise<Socket> {
  const server = createServer();
  servers.push(server);
  const conn = new Promise<Socket>((resolve) => {
    server.once('connection', (sock) => {
      server.close();
      resolve(sock);
    });
  });
  // Only this user may connect (the dir is 0700 already; this holds if it is ever loosened).
  server.once('listening', () => chmodSync(path, 0o600));
  server.listen(path);
  return conn;
}

function rejectAfter(ms: number, signal: AbortSignal | undefined, message: () => string) {
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const promise = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new CorralError('E_TIMEOUT', message())), ms);
    if (signal) {
      onAbort = () => reject(new CorralError('E_ABORTED', 'boot aborted', { cause: signal.reason }));
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    }
  });
  promise.catch(() => {}); // marked handled only: whoever awaits it gets the rejection; one nobody awaits yet must not crash the process
  return {
    promise,
    cancel() {
      clearTimeout(timer);
      if (onAbort) signal?.removeEventListener('abort', onAbort);
    },
  };
}

async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<false>((res) => (timer = setTimeout(() => res(false), ms)));
  const r = await Promise.race([p.then(() => true as const), t]);
  clearTimeout(timer);
  return r;
}

/** "exit code 1" / "signal SIGKILL". */
export function describeExit(x: VmExit): string {
  return x.signal ? `signal ${x.signal}` : `exit code ${x.code}`;
}

function lastLines(text: string, n = 12): string {
  const lines = text.trimEnd().split('\n');
  return lines.length ? `\n${lines.slice(-n).join('\n')}` : '(no console output)';
}

/** Bytes/s a save may use: no limit in practice (qemu's cap is 2^63 - 1 > this). */
const SAVE_BANDWIDTH = 2 ** 40;
/** A downtime bound no save reaches (qemu 7.2 caps it at 2 000 000 ms). */
const SAVE_DOWNTIME_MS = 1_000_000;

/** The guest RAM's block name in a stream: the memory backend's id (src/vm/qemuArgs.ts). */
const RAM_BLOCK = 'mem';

/** The fd number of the incoming migration stream in qemu. */
const STATE_FD = 4;

/**
 * What the jail's launcher writes on its pid fd: qemu's pid (its first line), and with a NIC
 * served by slirp4netns a line "net" once that is ready. The fd closes after them, or early
 * on a failure.
 */
function readLaunch(stream: Socket): { pid: Promise<number | undefined>; net: Promise<boolean> } {
  let text = '';
  let onPid!: (pid: number | undefined) => void;
  let onNet!: (ready: boolean) => void;
  const pid = new Promise<number | undefined>((r) => (onPid = r));
  const net = new Promise<boolean>((r) => (onNet = r));
  const lines = () => text.split('\n').slice(0, -1);
  const pidOf = (line: string | undefined) => {
    const n = Number(line);
    return Number.isInteger(n) && n > 0 ? n : undefined;
  };
  stream.setEncoding('utf8');
  stream.on('data', (d: string) => {
    text += d;
    const [first] = lines();
    if (first !== undefined) onPid(pidOf(first));
  });
  stream.once('close', () => {
    const [first, second] = lines();
    onPid(pidOf(first));
    onNet(second === 'net');
  });
  return { pid, net };
}

/** The files a VM uses, for its jail: read-only inputs, its own writable disks and run dir. */
function jailPaths(opts: VmBootOptions, runDir: string): JailPath[] {
  const ro = (path: string) => ({ path, writable: false });
  const rw = (path: string) => ({ path, writable: true });
  const lowers = opts.disk ? [] : opts.lower === undefined ? [] : 'path' in opts.lower ? [opts.lower] : opts.lower;
  const paths = [ro(opts.kernel), ro(opts.initramfs), rw(runDir), ...lowers.map((l) => ro(l.path))];
  if (opts.disk) paths.push(rw(opts.disk.path));
  if (opts.upper && !opts.disk) {
    paths.push(rw(opts.upper));
    // A clone's overlay reads its template's upper disk, by the path in its header.
    const backing = opts.upper.endsWith('.qcow2') ? qcow2Backing(opts.upper) : undefined;
    if (backing) paths.push(ro(backing));
  }
  // A template being built writes its RAM file; a clone's (mapped copy-on-write) is the
  // jail's privateRamFile, bound read-only.
  if (opts.memoryFile?.share) paths.push(rw(opts.memoryFile.path));
  for (const s of opts.shares ?? []) paths.push(s.readonly ? ro(s.path) : rw(s.path));
  return paths;
}

/**
 * Removes the socket dirs of VM boots whose process died before it could clean up (a boot
 * interrupted by SIGKILL). Called when a supervisor starts.
 */
export function sweepStaleRunDirs(): void {
  let names: string[];
  try {
    names = readdirSync(tmpdir());
  } catch {
    return;
  }
  for (const n of names) {
    const m = /^corral-run-(\d+)-/.exec(n);
    if (m && !processAlive(Number(m[1]))) rmSync(join(tmpdir(), n), { recursive: true, force: true });
  }
}
