// XState's inspection protocol, from sandbox actors in worker threads to the supervisor's
// `inspect` option, and from there to @statelyai/inspect's WebSocket inspector (the tool
// people attach to XState apps), received by a real WebSocket server on loopback. Real VMs.
import { createWebSocketInspector } from '@statelyai/inspect';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { InspectionEvent } from 'xstate';
import { WebSocketServer } from 'ws';
import { Sandbox, Supervisor } from '../../src/index.ts';
import { uniqueName } from '../helpers/sandbox.ts';

describe('the inspect option', () => {
  it('refuses what is neither a function nor an observer, naming the option', () => {
    expect(() => new Supervisor({ stateDir: process.env.CORRAL_STATE_DIR!, inspect: 42 as never })).toThrowError(/inspect/);
  });

  it('hands the sandbox actors\' inspection events over, as createActor({ inspect }) does', async () => {
    const seen: InspectionEvent[] = [];
    const sup = new Supervisor({ stateDir: process.env.CORRAL_STATE_DIR!, inspect: (e) => seen.push(e) });
    try {
      const sb = await Sandbox.builder(uniqueName('insp')).memory(128).supervisor(sup).create();
      await sb.pause();
      await sb.resume();
      await sb.exec('true');
      await sb.stop();
      const root = seen.find((e) => e.type === '@xstate.actor' && (e.actorRef as unknown as { logic?: { config: { id: string } } }).logic?.config.id === 'sandbox');
      expect(root).toBeDefined();
      const rootId = root!.actorRef.sessionId;
      const mine = seen.filter((e) => e.rootId === rootId);
      // The commands as events, the states as snapshots, in order.
      expect(mine.filter((e) => e.type === '@xstate.event').map((e) => (e as { event: { type: string } }).event.type)).toEqual(expect.arrayContaining(['pause', 'resume', 'exec', 'exec.done', 'stop']));
      const values = mine.filter((e) => e.type === '@xstate.snapshot' && e.actorRef.sessionId === rootId).map((e) => JSON.stringify((e as unknown as { snapshot: { value: unknown } }).snapshot.value));
      const at = (v: string) => values.findIndex((x) => x.includes(v));
      expect(at('"paused"')).toBeGreaterThan(at('"running"'));
      expect(values.at(-1)).toBe('"stopped"');
      // Invoked actors (boot or restore, stop) are children of the machine.
      const child = mine.find((e) => e.type === '@xstate.actor' && e.actorRef.sessionId !== rootId);
      expect((child?.actorRef as unknown as { _parent?: { sessionId: string } })._parent?.sessionId).toBe(rootId);
      expect((root!.actorRef as unknown as { getSnapshot(): { status: string } }).getSnapshot().status).toBe('done');
    } finally {
      await sup.close();
    }
  });

  describe('with @statelyai/inspect', () => {
    let wss: WebSocketServer;
    const received: { type: string; name?: string; definition?: string; snapshot?: { value: unknown } }[] = [];
    beforeAll(async () => {
      wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
      await new Promise((r) => wss.once('listening', r));
      wss.on('connection', (ws) => ws.on('message', (m) => received.push(JSON.parse(String(m)))));
    });
    afterAll(async () => {
      for (const c of wss.clients) c.terminate();
      await new Promise((r) => wss.close(r));
    });

    it('draws the sandbox machine and its states in an XState inspector', async () => {
      const port = (wss.address() as { port: number }).port;
      const inspector = createWebSocketInspector({ url: `ws://127.0.0.1:${port}` });
      const sup = new Supervisor({ stateDir: process.env.CORRAL_STATE_DIR!, inspect: inspector.inspect });
      try {
        const sb = await Sandbox.builder(uniqueName('stately')).memory(128).supervisor(sup).create();
        await sb.pause();
        await sb.resume();
        await sb.stop();
        await vi.waitFor(() => {
          const actor = received.find((e) => e.type === '@xstate.actor' && e.name === 'sandbox');
          expect(actor?.definition).toContain('"paused"');
          const values = received.filter((e) => e.type === '@xstate.snapshot' && e.snapshot?.value !== undefined).map((e) => JSON.stringify(e.snapshot!.value));
          expect(values.some((v) => v.includes('paused'))).toBe(true);
          expect(values).toContain('"stopped"');
        });
      } finally {
        inspector.stop();
        await sup.close();
      }
    });
  });
});
