/**
 * The event stream of a detached sandbox, read from its host process's control socket: one
 * connection per subscription, `subscribe(since)` on it, events until the host goes.
 */

import { connect } from 'node:net';
import { Observable } from 'rxjs';
import type { SandboxEvent } from '../bus/events.ts';
import { CorralError } from '../errors.ts';
import { LineSplitter, fromWire, type WireMessage } from './wire.ts';

/**
 * Replays the host's buffer after `since`, then its live events. Completes after
 * `sandbox.stopped`; a connection that ends before that errors with `E_CLOSED` (resume with
 * `since` = the last seq seen). Unsubscribing closes the connection.
 *
 * @example
 * remoteEvents('/state/run/worker.sock', 'worker', 41).subscribe((e) => console.log(e.seq));
 */
export function remoteEvents(socketPath: string, name: string, since: number): Observable<SandboxEvent> {
  return new Observable<SandboxEvent>((sub) => {
    const sock = connect(socketPath);
    const lines = new LineSplitter();
    let last = since;
    let done = false;
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(`${JSON.stringify({ id: 1, method: 'subscribe', args: [since] })}\n`));
    sock.on('data', (chunk: string) => {
      try {
        for (const line of lines.push(chunk)) {
          const msg = fromWire(JSON.parse(line)) as WireMessage;
          if ('error' in msg) throw new CorralError('E_PROTOCOL', `the host of "${name}" refused to subscribe: ${msg.error.message}`);
          if (!('event' in msg)) continue;
          last = msg.event.seq;
          sub.next(msg.event);
          if (msg.event.type === 'sandbox.stopped') {
            done = true;
            sub.complete();
            sock.destroy();
            return;
          }
        }
      } catch (err) {
        done = true;
        sub.error(err instanceof CorralError ? err : new CorralError('E_PROTOCOL', `bad message from the host of "${name}": ${(err as Error).message}`, { cause: err }));
        sock.destroy();
      }
    });
    sock.on('error', (err) => {
      if (done) return;
      done = true;
      sub.error(new CorralError('E_CLOSED', `event stream of "${name}" lost after seq ${last}: ${err.message} (resume with since: ${last})`, { cause: err, details: { lastSeq: last } }));
    });
    sock.on('close', () => {
      if (done) return;
      done = true;
      sub.error(new CorralError('E_CLOSED', `event stream of "${name}" closed by its host after seq ${last} (resume with since: ${last})`, { details: { lastSeq: last } }));
    });
    return () => {
      done = true;
      sock.destroy();
    };
  });
}
