/**
 * Pull policies: when a sandbox's image is fetched from its registry.
 *
 * | policy | behaviour |
 * |---|---|
 * | `always` | resolve the tag at the registry every time (only missing layers are fetched) |
 * | `if-missing` | use the cache, pull only what is not there (default) |
 * | `never` | use the cache; fail with `E_IMAGE_NOT_CACHED` if the image is not there |
 */
export type PullPolicy = 'always' | 'if-missing' | 'never';

export const PULL_POLICIES: readonly PullPolicy[] = ['always', 'if-missing', 'never'];

/**
 * microsandbox's names for the policies.
 *
 * @example
 * Sandbox.builder('w').image('python:3.12').pullPolicy(PullPolicy.Never)
 */
export const PullPolicy = { Always: 'always', IfMissing: 'if-missing', Never: 'never' } as const satisfies Record<string, PullPolicy>;
