// Node 20 cannot start a worker whose entry is a .ts file: register tsx's ESM loader in this
// piscina thread first, then import the TypeScript entry and hand its task function on.
import { register } from 'tsx/esm/api';

register();
const entry = await import(new URL('./image.worker.ts', import.meta.url).href);
export default entry.default;
