import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The 3-node cluster file (3 NATS servers, 3 corral node processes) fails about one full
    // run in three: a create or a node's start-up waits on a NATS request that never comes
    // back (README "Running on many machines", issue #16). Until that is fixed in the
    // product it runs with `npm run test:cluster`, not in `npm test`; the cluster's
    // permissions, TLS and placement files still run here.
    exclude: process.env.CORRAL_TEST_CLUSTER ? [] : ['test/cluster/cluster.test.ts'],
    // Each file runs in a child process: sandbox workers are threads of that process, and a
    // crashed file cannot take the others' VMs with it.
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 120_000,
    hookTimeout: 300_000,
    teardownTimeout: 60_000,
    globalSetup: ['test/globalSetup.ts'],
    // After each file: no handle, process, temp dir or socket it made is left (test/leakCheck.ts).
    setupFiles: ['test/leakCheck.ts'],
    reporters: ['default', './test/summaryReporter.ts'],
  },
});
