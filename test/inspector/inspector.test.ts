// The inspector page in real headless Chromium (Debian's `chromium`, installed by
// scripts/setup-ui.sh), driven by playwright-core, on a supervisor of its own (so "before any
// sandbox exists" means it): the chart before any sandbox, with no label on another label or
// on a state (bounding boxes in the page); a real sandbox's live state, followed through a
// pause, checked in screenshots (the pixels of the highlighted state); the timeline scrubbed
// back; the label filter. Set CORRAL_UI_SCREENSHOT to a directory to keep the screenshots.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Locator, type Page } from 'playwright-core';
import { PNG } from 'pngjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, Supervisor } from '../../src/index.ts';
import { CorralServer } from '../../src/server/CorralServer.ts';
import { uniqueName } from '../helpers/sandbox.ts';

const CHROMIUM = '/usr/bin/chromium';
const FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

interface Box {
  readonly what: string;
  readonly x: number;
  readonly y: number;
  readonly width: number;
  readonly height: number;
}

/** Pairs of boxes that overlap by more than half a pixel each way. */
function overlaps(boxes: readonly Box[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length; j++) {
      const a = boxes[i]!;
      const b = boxes[j]!;
      const w = Math.min(a.x + a.width, b.x + b.width) - Math.max(a.x, b.x);
      const h = Math.min(a.y + a.height, b.y + b.height) - Math.max(a.y, b.y);
      if (w > 0.5 && h > 0.5) out.push(`${a.what} × ${b.what}`);
    }
  }
  return out;
}

/** The colour most pixels of an element's screenshot have (its fill, for a state box). */
async function dominantColour(el: Locator): Promise<string> {
  const png = PNG.sync.read(await el.screenshot({ timeout: 120_000 }));
  const counts = new Map<string, number>();
  for (let i = 0; i < png.data.length; i += 4) {
    const hex = `#${[png.data[i]!, png.data[i + 1]!, png.data[i + 2]!].map((v) => v.toString(16).padStart(2, '0')).join('')}`;
    counts.set(hex, (counts.get(hex) ?? 0) + 1);
  }
  return [...counts.entries()].sort((a, b) => b[1] - a[1])[0]![0];
}

describe('the inspector page', () => {
  // npm test installs Chromium (scripts/setup-ui.sh): a missing one is a setup failure, not a skip.
  beforeAll(() => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run scripts/setup-ui.sh (npm test does)`);
  });

  let stateDir: string;
  let sup: Supervisor;
  let server: CorralServer;
  let profile: string;
  let browser: BrowserContext;
  let page: Page;
  const made: Sandbox[] = [];
  const external: string[] = [];
  const shots = () => process.env.CORRAL_UI_SCREENSHOT ?? profile;

  beforeAll(async () => {
    stateDir = mkdtempSync(join(tmpdir(), 'corral-ui-state-'));
    sup = new Supervisor({ stateDir });
    server = await CorralServer.listen({ supervisor: sup });
    profile = mkdtempSync(join(tmpdir(), 'corral-chromium-'));
    // A persistent context is how playwright takes a user data dir of our own (a fresh one).
    browser = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: FLAGS, viewport: { width: 1400, height: 900 } });
    page = browser.pages()[0] ?? (await browser.newPage());
    page.on('request', (r) => {
      if (!r.url().startsWith(server.url)) external.push(r.url());
    });
  });
  afterAll(async () => {
    await browser?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
    await Promise.all(made.map((s) => s.stop()));
    await server?.close();
    await sup?.close();
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  });

  it('draws the lifecycle chart before any sandbox exists, no label on another label or on a state', async () => {
    await page.goto(`${server.url}/ui`);
    const chart = page.locator('[data-role="machine"] svg.graph');
    await chart.waitFor();
    expect(await page.locator('#empty').isVisible()).toBe(true);
    for (const s of ['creating', 'running', 'paused', 'snapshotting', 'draining', 'stopping', 'stopped']) {
      expect(await chart.locator(`g.state[data-state="${s}"]`).count(), s).toBe(1);
    }
    // Every transition of `live`'s states has its label (the hand-made layout piled these up).
    for (const e of ['pause', 'resume', 'drain', 'snapshot', 'stop', 'wake']) {
      expect(await chart.locator(`g.edge-label[data-event="${e}"]`).count(), e).toBeGreaterThan(0);
    }
    const boxes: Box[] = await chart.evaluate((svg) => {
      const out: { what: string; x: number; y: number; width: number; height: number }[] = [];
      const box = (what: string, el: Element) => {
        const r = el.getBoundingClientRect();
        out.push({ what, x: r.x, y: r.y, width: r.width, height: r.height });
      };
      for (const l of Array.from(svg.querySelectorAll('g.edge-label'))) box(`label ${l.getAttribute('data-event')} (${l.getAttribute('data-source')?.split('.').pop()}→${l.getAttribute('data-target')?.split('.').pop()})`, l.querySelector('text')!);
      for (const s of Array.from(svg.querySelectorAll('g.state:not(.compound)'))) box(`state ${s.getAttribute('data-state')}`, s.querySelector('rect')!);
      return out;
    });
    expect(boxes.filter((b) => b.what.startsWith('label')).length).toBeGreaterThan(15);
    expect(overlaps(boxes)).toEqual([]);
    await page.screenshot({ path: join(shots(), 'inspector-chart.png'), fullPage: true, timeout: 120_000 });
  }, 240_000);

  it('shows a sandbox\'s live state in its colours, follows a pause, and shows exec output as it happens', async () => {
    const name = uniqueName('ui');
    const sb = await Sandbox.builder(name).memory(128).label('team', 'a').supervisor(sup).create();
    made.push(sb);
    const card = page.locator(`[data-sandbox="${name}"]`);
    await card.locator('svg.graph').waitFor({ timeout: 30_000 });
    await expect.poll(() => card.getAttribute('data-current-state'), { timeout: 15_000 }).toBe('running');
    expect(await card.locator('g.state.active[data-state="running"]').count()).toBe(1);
    expect(await card.locator('[data-role="labels"]').textContent()).toBe('team=a');
    // The screenshot of the highlighted state: green for running.
    expect(await dominantColour(card.locator('g.state.active[data-state="running"] > rect'))).toBe('#d8f5e6');

    await sb.exec('sh', ['-c', 'echo hello from the guest']);
    await expect.poll(() => card.locator('[data-role="output"]').textContent(), { timeout: 10_000 }).toContain('hello from the guest');

    await sb.pause();
    await expect.poll(() => card.getAttribute('data-current-state'), { timeout: 10_000 }).toBe('paused');
    expect(await card.locator('g.state.active[data-state="paused"]').count()).toBe(1);
    expect(await card.locator('g.state.active[data-state="running"]').count()).toBe(0);
    expect(await card.locator('[data-role="status"]').textContent()).toBe('paused');
    expect(await card.locator('[data-role="events"]').textContent()).toContain('sandbox.paused');
    // Paused is drawn amber, and the running box is back to white.
    expect(await dominantColour(card.locator('g.state.active[data-state="paused"] > rect'))).toBe('#fdeccc');
    expect(await dominantColour(card.locator('g.state[data-state="running"] > rect'))).toBe('#ffffff');
    await page.screenshot({ path: join(shots(), 'inspector-paused.png'), fullPage: true, timeout: 120_000 });

    await sb.resume();
    await expect.poll(() => card.getAttribute('data-current-state'), { timeout: 10_000 }).toBe('running');
    expect(external).toEqual([]);
  }, 240_000);

  it('scrubs a sandbox\'s timeline back to a past state and returns to live', async () => {
    const name = made[0]!.name;
    const card = page.locator(`[data-sandbox="${name}"]`);
    const timeline = card.locator('[data-role="timeline"]');
    // History so far: … running, paused, running.
    const max = Number(await timeline.getAttribute('max'));
    expect(max).toBeGreaterThanOrEqual(2);
    await timeline.fill(String(max - 1));
    await expect.poll(() => card.getAttribute('data-view-state')).toBe('paused');
    expect(await card.locator('g.state.active[data-state="paused"]').count()).toBe(1);
    expect(await card.locator('[data-role="when"]').textContent()).toContain('paused');
    // Events after that point are dimmed; the live state is still known.
    expect(await card.locator('[data-role="events"] .later').count()).toBeGreaterThan(0);
    expect(await card.getAttribute('data-current-state')).toBe('running');
    await card.locator('[data-role="live"]').click();
    await expect.poll(() => card.getAttribute('data-view-state')).toBe('running');
    expect(await card.locator('[data-role="events"] .later').count()).toBe(0);
  }, 120_000);

  it('filters the sandboxes by label', async () => {
    const other = await Sandbox.builder(uniqueName('uib')).memory(128).label('team', 'b').supervisor(sup).create();
    made.push(other);
    const first = page.locator(`[data-sandbox="${made[0]!.name}"]`);
    const second = page.locator(`[data-sandbox="${other.name}"]`);
    await second.waitFor({ timeout: 30_000 });
    await page.locator('[data-role="filter"]').fill('team=b');
    expect(await first.isVisible()).toBe(false);
    expect(await second.isVisible()).toBe(true);
    await page.locator('[data-role="filter"]').fill('team');
    expect(await first.isVisible()).toBe(true);
    await page.locator('[data-role="filter"]').fill('');
    expect(await second.isVisible()).toBe(true);
    expect(readFileSync(join(shots(), 'inspector-paused.png')).subarray(1, 4).toString()).toBe('PNG');
  }, 120_000);
});
