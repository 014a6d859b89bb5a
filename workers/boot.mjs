// Node 20 cannot start a worker whose entry is a .ts file: register tsx's ESM loader in this
// thread first, then import the TypeScript entry named by the supervisor.
import { workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
await import(workerData.entry);
