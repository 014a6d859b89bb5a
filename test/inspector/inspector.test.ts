// The inspector page in real headless Chromium (Debian's `chromium`, installed by
// scripts/setup-ui.sh), driven by playwright-core: it draws the machine, shows the live state
// of a real sandbox and follows it when the sandbox is paused. Set CORRAL_UI_SCREENSHOT to a
// path to keep the screenshot.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox } from '../../src/index.ts';
import { CorralServer } from '../../src/server/CorralServer.ts';
import type { Supervisor } from '../../src/supervisor/Supervisor.ts';
import { testSupervisor, uniqueName } from '../helpers/sandbox.ts';

const CHROMIUM = '/usr/bin/chromium';
const FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

describe('the inspector page', () => {
  // npm test installs Chromium (scripts/setup-ui.sh): a missing one is a setup failure, not a skip.
  beforeAll(() => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run scripts/setup-ui.sh (npm test does)`);
  });

  let sup: Supervisor;
  let server: CorralServer;
  let sb: Sandbox;
  let profile: string;
  let browser: BrowserContext;
  let page: Page;
  const name = uniqueName('ui');

  beforeAll(async () => {
    sup = testSupervisor();
    server = await CorralServer.listen({ supervisor: sup });
    sb = await Sandbox.builder(name).supervisor(sup).create();
    profile = mkdtempSync(join(tmpdir(), 'corral-chromium-'));
    // A persistent context is how playwright takes a user data dir of our own (a fresh one).
    browser = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: FLAGS, viewport: { width: 1280, height: 720 } });
    page = browser.pages()[0] ?? (await browser.newPage());
  });
  afterAll(async () => {
    await browser?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
    await sb?.stop();
    await server?.close();
    await sup?.close();
  });

  it('shows the current state, follows a pause, and shows exec output as it happens', async () => {
    const external: string[] = [];
    page.on('request', (r) => {
      if (!r.url().startsWith(server.url)) external.push(r.url());
    });
    await page.goto(`${server.url}/ui`);
    const card = page.locator(`[data-sandbox="${name}"]`);
    await card.locator('svg.graph').waitFor();
    await expect.poll(() => card.getAttribute('data-current-state'), { timeout: 15_000 }).toBe('running');
    expect(await card.locator('g.state.active[data-state="running"]').count()).toBe(1);
    expect(await card.locator('g.state[data-state="paused"]').count()).toBe(1);

    await sb.exec('sh', ['-c', 'echo hello from the guest']);
    await expect.poll(() => card.locator('[data-role="output"]').textContent(), { timeout: 10_000 }).toContain('hello from the guest');

    await sb.pause();
    await expect.poll(() => card.getAttribute('data-current-state'), { timeout: 10_000 }).toBe('paused');
    expect(await card.locator('g.state.active[data-state="paused"]').count()).toBe(1);
    expect(await card.locator('g.state.active[data-state="running"]').count()).toBe(0);
    expect(await card.locator('[data-role="status"]').textContent()).toBe('paused');
    expect(await card.locator('[data-role="events"]').textContent()).toContain('sandbox.paused');

    const shot = process.env.CORRAL_UI_SCREENSHOT ?? join(profile, 'inspector.png');
    // Under a full suite's load (other files' VMs on the same 2 cores) Chromium once needed
    // more than playwright's default 30 s to rasterise the page.
    await page.screenshot({ path: shot, fullPage: true, timeout: 120_000 });
    expect(readFileSync(shot).subarray(1, 4).toString()).toBe('PNG');
    expect(external).toEqual([]);
    await sb.resume();
    await expect.poll(() => card.getAttribute('data-current-state'), { timeout: 10_000 }).toBe('running');
  }, 240_000);
});
