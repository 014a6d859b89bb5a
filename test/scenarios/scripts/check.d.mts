// Types of check.mjs, for the TypeScript scenarios.
export declare const id: string;
export declare function check(label: string, holds: unknown, detail?: string): void;
export declare function rejectsWith(code: string, fn: () => Promise<unknown>): Promise<(Error & { code: string }) | undefined>;
