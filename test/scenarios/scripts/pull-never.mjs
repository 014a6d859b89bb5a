// Seed "Private registry" / pull policy never: E_IMAGE_NOT_CACHED for an uncached ref, a
// boot from the cache for a cached one. SCENARIO_REGISTRY is a loopback registry holding the
// busybox test image as scenarios/busybox:v1 (the runner starts it).
import { Sandbox, PullPolicy } from 'corral';
import { check, id, rejectsWith } from './check.mjs';

const registry = process.env.SCENARIO_REGISTRY;
if (!registry) throw new Error('SCENARIO_REGISTRY is not set (host:port of a registry with scenarios/busybox:v1)');
// A tag of this run only, so "uncached" holds whatever earlier runs pulled.
const ref = `${registry}/scenarios/busybox:${process.env.SCENARIO_TAG ?? 'v1'}`;

const err = await rejectsWith('E_IMAGE_NOT_CACHED', () => Sandbox.builder(`${id}-offline`).image(ref).pullPolicy(PullPolicy.Never).create());
check('never on an uncached ref fails E_IMAGE_NOT_CACHED', err !== undefined && err.message.includes(ref.split('/').slice(1).join('/')), err?.message);
check('nothing left of the failed create', (await Sandbox.list()).every((s) => s.name !== `${id}-offline` || s.status === 'stopped'));
await Sandbox.remove(`${id}-offline`).catch((e) => {
  if (e.code !== 'E_SANDBOX_NOT_FOUND') throw e;
});

const pulled = await Sandbox.builder(`${id}-pull`).image(ref).pullPolicy(PullPolicy.IfMissing).create();
check('if-missing pulls it', (await pulled.shell('cat /marker')).stdout === 'busybox\n');
await pulled.stop();
await Sandbox.remove(pulled.name);

const cached = await Sandbox.builder(`${id}-cached`).image(ref).pullPolicy(PullPolicy.Never).create();
try {
  check('never on a cached ref boots', (await cached.shell('cat /marker')).stdout === 'busybox\n');
} finally {
  await cached.stop();
  await Sandbox.remove(cached.name);
}
console.log('done');
