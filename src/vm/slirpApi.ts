/**
 * The API socket of a jailed VM's slirp4netns (its network, outside qemu's network
 * namespace: src/vm/jail.ts): published ports are its host forwards, added and removed
 * while the VM runs. One JSON request per connection, one JSON answer, then it closes.
 */

import { createConnection } from 'node:net';
import { CorralError } from '../errors.ts';
import { GUEST_NET } from '../guestenv/netfilter.ts';

interface Answer {
  readonly return?: { readonly id?: number; readonly entries?: readonly { id: number; host_port: number }[] };
  readonly error?: { readonly desc?: string };
}

function call(socket: string, execute: string, args: Record<string, unknown>): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const conn = createConnection(socket);
    let text = '';
    conn.setEncoding('utf8');
    conn.on('data', (d: string) => (text += d));
    conn.once('error', (err) => reject(new CorralError('E_VM_CRASHED', `the VM's network (slirp4netns at ${socket}) did not answer ${execute}: ${err.message}`, { cause: err })));
    conn.once('end', () => {
      try {
        resolve(JSON.parse(text) as Answer);
      } catch (err) {
        reject(new CorralError('E_VM_CRASHED', `the VM's network (slirp4netns) answered ${execute} with "${text.slice(0, 200)}"`, { cause: err }));
      }
    });
    conn.end(JSON.stringify({ execute, arguments: args }));
  });
}

/** Host forwards of one VM's slirp4netns, by host port. */
export class SlirpForwards {
  readonly #socket: string;
  readonly #ids = new Map<number, number>();

  constructor(socket: string) {
    this.#socket = socket;
  }

  /** Forwards 127.0.0.1:hostPort to the guest's port. Returns slirp4netns's refusal, or undefined. */
  async add(hostPort: number, guestPort: number): Promise<string | undefined> {
    if (this.#ids.has(hostPort)) return `127.0.0.1:${hostPort} is forwarded already`;
    const a = await call(this.#socket, 'add_hostfwd', { proto: 'tcp', host_addr: '127.0.0.1', host_port: hostPort, guest_addr: GUEST_NET.address, guest_port: guestPort });
    if (a.return?.id === undefined) return a.error?.desc ?? 'slirp4netns gave no id';
    this.#ids.set(hostPort, a.return.id);
    return undefined;
  }

  /** Removes the forward of 127.0.0.1:hostPort. False if there was none. */
  async remove(hostPort: number): Promise<boolean> {
    const id = this.#ids.get(hostPort);
    if (id === undefined) return false;
    const a = await call(this.#socket, 'remove_hostfwd', { id });
    if (a.error) throw new CorralError('E_VM_CRASHED', `slirp4netns did not remove the forward of 127.0.0.1:${hostPort}: ${a.error.desc ?? 'no reason given'}`);
    this.#ids.delete(hostPort);
    return true;
  }
}
