/**
 * Named volumes (`.volume('/data', v => v.named('my-data'))`): corral-managed directories
 * under the state dir that outlive the sandboxes using them.
 *
 * @example
 * for (const v of await Volume.list()) console.log(v.name, v.path, v.usedBy);
 * await Volume.remove('my-data');
 */

import { ensureVolume, listVolumes, readVolume, removeVolume, type VolumeInfo } from '../guestenv/namedVolumes.ts';
import type { Supervisor } from '../supervisor/Supervisor.ts';
import { bounded, type CallOptions } from '../runtime/callOptions.ts';
import { getDefaultSupervisor } from './Sandbox.ts';

export type { VolumeInfo };

export const Volume = {
  /** Makes a volume ahead of its first use (a no-op if it exists); sandboxes also make it on first mount. */
  async create(name: string, options: { supervisor?: Supervisor } & CallOptions = {}): Promise<VolumeInfo> {
    return bounded(`create of volume "${name}"`, options, async () => {
      const stateDir = (options.supervisor ?? getDefaultSupervisor()).stateDir;
      await ensureVolume(stateDir, name);
      return readVolume(stateDir, name);
    });
  },
  /** Every named volume in the supervisor's state dir. */
  async list(options: { supervisor?: Supervisor } & CallOptions = {}): Promise<VolumeInfo[]> {
    return bounded('volume list', options, async () => listVolumes((options.supervisor ?? getDefaultSupervisor()).stateDir));
  },
  /** One volume; throws E_VOLUME_NOT_FOUND. */
  async get(name: string, options: { supervisor?: Supervisor } & CallOptions = {}): Promise<VolumeInfo> {
    return bounded(`lookup of volume "${name}"`, options, async () => readVolume((options.supervisor ?? getDefaultSupervisor()).stateDir, name));
  },
  /**
   * Deletes a volume and its data. Refuses (E_VOLUME_IN_USE) while a running sandbox has it
   * mounted, unless `force`.
   */
  async remove(name: string, options: { supervisor?: Supervisor; force?: boolean } & CallOptions = {}): Promise<void> {
    await bounded(`removal of volume "${name}"`, options, () => removeVolume((options.supervisor ?? getDefaultSupervisor()).stateDir, name, { force: options.force ?? false }));
  },
};
