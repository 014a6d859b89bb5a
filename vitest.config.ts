import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
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
