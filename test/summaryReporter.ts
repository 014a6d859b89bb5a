/**
 * Prints one plain closing line, `N passed, N failed, N skipped`, after vitest's own summary,
 * so anything reading the end of a run (CI) gets the counts without parsing vitest's layout.
 *
 * `failed` counts failed tests and also every failure that is not a test's own: a hook
 * (beforeAll/afterAll) that threw, a file that failed to load, an unhandled error or
 * rejection. Those tests that a failed beforeAll kept from running still count as skipped,
 * so a line above the closing one names each such failure: "N skipped" never hides one.
 */
import type { Reporter, SerializedError, TestModule, TestRunEndReason } from 'vitest/node';

export default class SummaryReporter implements Reporter {
  onTestRunEnd(modules: ReadonlyArray<TestModule>, unhandledErrors: ReadonlyArray<SerializedError>, reason: TestRunEndReason): void {
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    const notTests: string[] = [];
    for (const m of modules) {
      let failedTests = 0;
      for (const t of m.children.allTests()) {
        const state = t.result().state;
        if (state === 'passed') passed++;
        else if (state === 'failed') failedTests++;
        else skipped++;
      }
      failed += failedTests;
      // Errors of a suite or a module are those of its hooks (beforeAll/afterAll) and of
      // collection (a file that does not load): none belongs to a test.
      const suiteErrors = [m, ...m.children.allSuites()].flatMap((s) =>
        s.errors().map((e) => `${m.relativeModuleId}${s.type === 'suite' ? ` > ${s.fullName}` : ''}: ${e.message}`),
      );
      notTests.push(...suiteErrors);
      // A module that failed with no failed test and no error of its own still failed.
      if (m.state() === 'failed' && failedTests === 0 && suiteErrors.length === 0) notTests.push(`${m.relativeModuleId}: failed`);
    }
    for (const e of unhandledErrors) notTests.push(`unhandled error: ${e.message}`);
    if (reason === 'interrupted') notTests.push('the run was interrupted');
    failed += notTests.length;
    for (const line of notTests) process.stdout.write(`\nfailed outside a test: ${line}`);
    process.stdout.write(`\n${passed} passed, ${failed} failed, ${skipped} skipped\n`);
  }
}
