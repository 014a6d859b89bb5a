/**
 * The fluent builder of a sandbox (microsandbox's `Sandbox::builder`, one for one where it
 * applies). Every setter validates at once and names the option it rejects.
 */

import {
  DEFAULTS,
  LIMITS,
  LOG_LEVELS,
  type LogLevel,
  normalizeConfig,
  validateAbsolutePath,
  validateEnvName,
  validateEnvValue,
  validateImage,
  validateInt,
  validateName,
  type SandboxConfig,
} from '../config.ts';
import { InvalidOptionError } from '../errors.ts';
import { normalizeRegistryAuth, type RegistryAuthInput } from '../image/auth.ts';
import { normalizeImageFields } from '../image/imageOptions.ts';
import type { PullPolicy } from '../image/pullPolicy.ts';
import { ImageBuilder } from './ImageBuilder.ts';
import type { CreateOptions, Supervisor } from '../supervisor/Supervisor.ts';
import type { Cluster } from '../cluster/Cluster.ts';
import type { CallOptions } from '../runtime/callOptions.ts';
import { parseAccel, type AccelOption } from '../vm/accel.ts';
import { normalizeGuestFields } from '../guestenv/guestConfig.ts';
import { NetworkBuilder } from '../guestenv/NetworkPolicy.ts';
import { PatchBuilder } from '../guestenv/patches.ts';
import { guestPath } from '../guestenv/paths.ts';
import { validatePort } from '../guestenv/ports.ts';
import { validateScript } from '../guestenv/scripts.ts';
import { VolumeBuilder } from '../guestenv/volumes.ts';

/** Where a cluster create may place the sandbox. */
export interface PlacementOptions {
  /** Only nodes carrying all these labels. */
  readonly labels?: Readonly<Record<string, string>>;
}

type Create<S> = (
  config: SandboxConfig,
  options: CreateOptions & CallOptions & { supervisor?: Supervisor; detached?: boolean; cluster?: Cluster; placement?: PlacementOptions },
) => Promise<S>;

/**
 * @example
 * const sb = await Sandbox.builder('worker').image('corral/base').memory(256).cpus(1)
 *   .workdir('/app').env('DEBUG', 'true').create();
 */
export class SandboxBuilder<S = unknown> {
  #config: { -readonly [K in keyof SandboxConfig]: SandboxConfig[K] };
  #replace = false;
  #detached = false;
  #supervisor: Supervisor | undefined;
  #cluster: Cluster | undefined;
  #placement: PlacementOptions | undefined;
  readonly #create: Create<S>;

  /**
   * @internal use `Sandbox.builder(name)`. `create` makes the product (a `Sandbox`: this
   * module does not import it, which would make an import cycle).
   */
  constructor(name: string, create: Create<S>) {
    this.#create = create;
    this.#config = {
      name: validateName(name),
      image: DEFAULTS.image,
      memoryMib: DEFAULTS.memoryMib,
      cpus: DEFAULTS.cpus,
      workdir: DEFAULTS.workdir,
      shell: DEFAULTS.shell,
      env: {},
      labels: {},
      accel: DEFAULTS.accel,
      bootTimeoutMs: DEFAULTS.bootTimeoutMs,
      stopTimeoutMs: DEFAULTS.stopTimeoutMs,
      logLevel: DEFAULTS.logLevel,
    };
  }

  /** The root filesystem: `corral/base` (default, built by setup). */
  /**
   * The root filesystem: an OCI reference (`python:3.12`, `registry:5000/team/app@sha256:…`),
   * `corral/base` (default, built by setup), a disk image path (`./ubuntu.qcow2`), or
   * `(i) => i.disk('./alpine.raw').fstype('ext4')`.
   */
  image(ref: string | ((i: ImageBuilder) => ImageBuilder)): this {
    const fields = typeof ref === 'function' ? ref(new ImageBuilder()).toConfig() : { image: ref };
    const checked = normalizeImageFields(fields, validateImage(fields.image));
    this.#config.image = checked.image;
    if (checked.disk) this.#config.disk = checked.disk;
    else delete this.#config.disk;
    return this;
  }

  /** When to pull: `always`, `if-missing` (default), `never` (see {@link PullPolicy}). */
  pullPolicy(policy: PullPolicy): this {
    this.#config.pullPolicy = normalizeImageFields({ pullPolicy: policy }, 'corral/base').pullPolicy!;
    return this;
  }

  /**
   * Credentials for the image's registry: `{ kind: 'basic', username, passwordEnv: 'VAR' }`,
   * or `{ kind: 'basic', username, password }` — the password is then kept in this process's
   * secret registry and the config holds only a handle (never the password).
   */
  registryAuth(auth: RegistryAuthInput): this {
    this.#config.registryAuth = normalizeRegistryAuth(auth, true);
    return this;
  }

  /** Registries (host[:port]) that may be used over plain http. Loopback always may. */
  insecureRegistries(...hosts: string[]): this {
    this.#config.insecureRegistries = normalizeImageFields({ insecureRegistries: hosts }, 'corral/base').insecureRegistries!;
    return this;
  }

  /** Guest memory in MiB (64–65536). */
  memory(mib: number): this {
    this.#config.memoryMib = validateInt(mib, 'memory', LIMITS.memoryMib, ' MiB');
    return this;
  }

  /** Virtual CPUs (1–64). */
  cpus(n: number): this {
    this.#config.cpus = validateInt(n, 'cpus', LIMITS.cpus);
    return this;
  }

  /** Default working directory of execs; created at boot if missing. */
  workdir(path: string): this {
    this.#config.workdir = validateAbsolutePath(path, 'workdir');
    return this;
  }

  /** Shell used by `sandbox.shell()`. Default `/bin/sh`. */
  shell(path: string): this {
    this.#config.shell = validateAbsolutePath(path, 'shell');
    return this;
  }

  /** Sets one environment variable for every exec. */
  env(name: string, value: string): this {
    validateEnvName(name);
    this.#config.env = { ...this.#config.env, [name]: validateEnvValue(name, value) };
    if (Object.keys(this.#config.env).length > LIMITS.envMaxEntries) {
      throw new InvalidOptionError('env', `at most ${LIMITS.envMaxEntries} variables`, Object.keys(this.#config.env).length);
    }
    return this;
  }

  /** Sets a label (for listing and filtering). */
  label(key: string, value: string): this {
    const labels = { ...this.#config.labels, [key]: value };
    normalizeConfig({ name: this.#config.name, labels }); // validates with the field path
    this.#config.labels = labels;
    return this;
  }

  /**
   * Mounts a volume at `guestPath`: a host directory (`v.bind('./src')`, `.readonly()` is
   * enforced by qemu on the host), a corral-managed named volume (`v.named('my-data')`,
   * kept across sandboxes, see `Volume`), or a size-limited tmpfs (`v.tmpfs().size(100)`, MiB).
   *
   * @example
   * .volume('/app/src', (v) => v.bind('./src').readonly())
   */
  volume(path: string, configure: (v: VolumeBuilder) => VolumeBuilder): this {
    const guest = guestPath(path, 'volume');
    if (typeof configure !== 'function') throw new InvalidOptionError(`volume ${guest}`, 'a function (v) => v.bind(…) | v.named(…) | v.tmpfs()', configure);
    const volume = configure(new VolumeBuilder(`volume ${guest}`)).toConfig(guest);
    return this.#setGuest({ volumes: [...(this.#config.volumes ?? []), volume] });
  }

  /** Adds an executable script at `/.msb/scripts/<name>`, on `PATH` for exec and shell. */
  script(name: string, body: string): this {
    validateScript(name, body);
    return this.#setGuest({ scripts: { ...this.#config.scripts, [name]: body } });
  }

  /**
   * Changes the root filesystem before user code runs, in this sandbox's writable layer
   * only: `p.text(path, content)`, `.append`, `.mkdir`, `.copyDir(hostDir, guestDir)`,
   * `.symlink(target, linkPath)`, `.remove(path)`. Applied in order.
   */
  patch(configure: (p: PatchBuilder) => PatchBuilder): this {
    if (typeof configure !== 'function') throw new InvalidOptionError('patch', 'a function (p) => p.text(…)…', configure);
    return this.#setGuest({ patches: [...(this.#config.patches ?? []), ...configure(new PatchBuilder()).toConfig()] });
  }

  /**
   * The guest's network and its policy, enforced on the host. Without `.network()` the VM
   * has no NIC at all.
   *
   * @example
   * .network((n) => n.policy(NetworkPolicy.publicOnly()))
   */
  network(configure: (n: NetworkBuilder) => NetworkBuilder): this {
    if (typeof configure !== 'function') throw new InvalidOptionError('network', 'a function (n) => n.policy(…)', configure);
    return this.#setGuest({ network: configure(new NetworkBuilder()).toConfig() });
  }

  /** Publishes guest TCP port `guestPort` at `127.0.0.1:hostPort` on the host. */
  port(hostPort: number, guestPort: number): this {
    const p = validatePort(hostPort, guestPort);
    return this.#setGuest({ ports: [...(this.#config.ports ?? []), p] });
  }

  /** CPU acceleration: `auto` (default: KVM where it really works, else TCG), `kvm`, `tcg`. */
  accel(value: AccelOption): this {
    this.#config.accel = parseAccel(value);
    return this;
  }

  /** How long boot may take. */
  bootTimeoutMs(ms: number): this {
    this.#config.bootTimeoutMs = validateInt(ms, 'bootTimeoutMs', LIMITS.timeoutMs, ' ms');
    return this;
  }

  /** How long a graceful stop may take before kill. */
  stopTimeoutMs(ms: number): this {
    this.#config.stopTimeoutMs = validateInt(ms, 'stopTimeoutMs', LIMITS.timeoutMs, ' ms');
    return this;
  }

  /** Host-enforced maximum lifetime in seconds; when exceeded the sandbox drains. */
  maxDuration(seconds: number): this {
    this.#config.maxDurationMs = secondsToMs(seconds, 'maxDuration');
    return this;
  }

  /**
   * Host-enforced idle limit in seconds: that long with no exec running drains the sandbox
   * (`action: 'stop'`, the default) or pauses it (`action: 'pause'`: its vCPUs freeze, and
   * the next call that needs the guest — exec, files, ping — resumes it and restarts the
   * timer; `info()` and `list()` read it paused without waking it).
   *
   * @example
   * Sandbox.builder('warm').idleTimeout(30, { action: 'pause' }).create();
   */
  idleTimeout(seconds: number, options: { action?: 'stop' | 'pause' } = {}): this {
    this.#config.idleTimeoutMs = secondsToMs(seconds, 'idleTimeout');
    if (options.action !== undefined) {
      if (options.action !== 'stop' && options.action !== 'pause') throw new InvalidOptionError('action', 'one of "stop", "pause"', options.action);
      this.#config.idleAction = options.action;
    }
    return this;
  }

  /**
   * A shell command started in the background as the guest comes up (E2B's `setStartCmd`):
   * a server, a warmed interpreter. It runs in the template, so a sandbox restored from it
   * finds it running at once; a cold boot or a start runs it again. The template is keyed
   * on it (and on the env), so sandboxes without it never share that template.
   *
   * @example
   * Sandbox.builder('api').startCmd('python3 -m http.server 8000').readyCmd('wget -qO- localhost:8000').create();
   */
  startCmd(cmd: string): this {
    if (typeof cmd !== 'string' || cmd.trim() === '') throw new InvalidOptionError('startCmd', 'a non-empty shell command', cmd);
    this.#config.startCmd = cmd;
    return this;
  }

  /** A shell command that succeeds once the start command's work is ready (polled; bootTimeoutMs bounds the wait). */
  readyCmd(cmd: string): this {
    if (typeof cmd !== 'string' || cmd.trim() === '') throw new InvalidOptionError('readyCmd', 'a non-empty shell command', cmd);
    this.#config.readyCmd = cmd;
    return this;
  }

  /** Verbosity of the sandbox runtime's log: error, warn (default), info, debug, trace. */
  logLevel(level: LogLevel): this {
    if (!LOG_LEVELS.includes(level)) throw new InvalidOptionError('logLevel', `one of ${LOG_LEVELS.map((l) => `"${l}"`).join(', ')}`, level);
    this.#config.logLevel = level;
    return this;
  }

  /**
   * Whether to start from a template of this shape (default true): the first sandbox of a
   * shape boots once more to save it, later ones restore it in a fraction of a cold boot.
   */
  template(on: boolean): this {
    if (typeof on !== 'boolean') throw new InvalidOptionError('template', 'true or false', on);
    this.#config.template = on;
    return this;
  }

  /**
   * Start from a snapshot taken with `sandbox.snapshot(name)`: memory and disk as they were,
   * what was running still running. Image, memory, cpus and patches come from the snapshot;
   * volumes, network policy, ports and scripts from this builder where it sets them, else
   * from the snapshot's source (at most as many bind/named volumes as the snapshot had, and
   * network only if it had a NIC).
   *
   * @example
   * await Sandbox.builder('copy').fromSnapshot('warm').network((n) => n.policy(NetworkPolicy.none())).create()
   */
  fromSnapshot(name: string): this {
    this.#config.fromSnapshot = validateName(name, 'fromSnapshot');
    return this;
  }

  /** Replace a same-named sandbox instead of failing on the conflict. */
  replace(): this {
    this.#replace = true;
    return this;
  }

  /** Create the sandbox detached (same as {@link createDetached}). */
  detached(on = true): this {
    this.#detached = on;
    return this;
  }

  /** Use this supervisor instead of the process-wide default. */
  supervisor(sup: Supervisor): this {
    this.#supervisor = sup;
    return this;
  }

  /** The config as plain JSON-serialisable data, without booting anything. */
  build(): SandboxConfig {
    return normalizeConfig(structuredClone(this.#config));
  }

  /** Validates the guest fields together (as `build()` will), then keeps them. */
  #setGuest(fields: Partial<Pick<SandboxConfig, 'volumes' | 'scripts' | 'patches' | 'network' | 'ports'>>): this {
    const c = this.#config;
    const merged = { volumes: c.volumes, scripts: c.scripts, patches: c.patches, network: c.network, ports: c.ports, ...fields };
    const checked = normalizeGuestFields(merged);
    for (const k of ['volumes', 'scripts', 'patches', 'network', 'ports'] as const) delete c[k];
    Object.assign(c, checked);
    return this;
  }

  /**
   * Create the sandbox on a node of this cluster instead of in this process: placed on the
   * least loaded node that matches {@link placement} and has room (README "Running on many
   * machines").
   *
   * @example
   * const sb = await Sandbox.builder('job-1').cluster(cluster).placement({ labels: { zone: 'a' } }).create();
   */
  cluster(cluster: Cluster): this {
    if (!cluster || typeof (cluster as { nodes?: unknown }).nodes !== 'function') throw new InvalidOptionError('cluster', 'a Cluster from Cluster.connect()', cluster);
    this.#cluster = cluster;
    return this;
  }

  /** Which cluster nodes may take the sandbox (with {@link cluster}). */
  placement(options: PlacementOptions): this {
    const labels = options?.labels ?? {};
    if (typeof labels !== 'object' || Object.entries(labels).some(([k, v]) => !k || typeof v !== 'string')) {
      throw new InvalidOptionError('placement.labels', 'an object of string labels ({ zone: "a" })', options?.labels);
    }
    this.#placement = { labels: { ...labels } };
    return this;
  }

  /** Boots the sandbox. `signal` or `timeoutMs` end a boot that takes too long: its VM is killed. */
  create(options: Omit<CreateOptions, 'replace' | 'controlSocket'> & CallOptions = {}): Promise<S> {
    if (this.#placement && !this.#cluster) return Promise.reject(new InvalidOptionError('placement', 'only with .cluster(cluster)', this.#placement));
    if (this.#cluster && this.#detached) return Promise.reject(new InvalidOptionError('detached', 'not with .cluster(): a cluster sandbox lives on its node already', true));
    return this.#create(this.build(), {
      ...options,
      replace: this.#replace,
      detached: this.#detached,
      ...(this.#supervisor ? { supervisor: this.#supervisor } : {}),
      ...(this.#cluster ? { cluster: this.#cluster } : {}),
      ...(this.#placement ? { placement: this.#placement } : {}),
    });
  }

  /**
   * Boots the sandbox detached: it survives this process in a host process of its own and
   * is reached again with `Sandbox.get(name)` from any process.
   */
  createDetached(options: CallOptions = {}): Promise<S> {
    return this.#create(this.build(), { ...options, replace: this.#replace, detached: true, ...(this.#supervisor ? { supervisor: this.#supervisor } : {}) });
  }
}

function secondsToMs(seconds: number, option: string): number {
  const { min, max } = LIMITS.policyMs;
  if (typeof seconds !== 'number' || !Number.isFinite(seconds) || seconds * 1000 < min || seconds * 1000 > max) {
    throw new InvalidOptionError(option, `a number of seconds from ${min / 1000} to ${max / 1000}`, seconds);
  }
  return Math.round(seconds * 1000);
}
