// The scenarios' one helper: print a checkable line per check, and fail the process (exit
// code 1, set, never process.exit) when a check does not hold.
export const id = process.env.SCENARIO_ID ?? `s${process.pid}`;

/** Prints `ok <label>`, or `FAIL <label>: <detail>` and marks the process failed. */
export function check(label, holds, detail = '') {
  if (holds) {
    console.log(`ok ${label}`);
  } else {
    console.log(`FAIL ${label}${detail ? `: ${detail}` : ''}`);
    process.exitCode = 1;
  }
}

/** Runs `fn`, which must reject with a CorralError of `code`; returns that error (or undefined). */
export async function rejectsWith(code, fn) {
  try {
    await fn();
  } catch (err) {
    if (err?.code === code) return err;
    throw err;
  }
  return undefined;
}
