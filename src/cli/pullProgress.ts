/**
 * A progress bar for `corral pull`, drawn from `image.pull.*` events on a terminal (one
 * line, redrawn), or plain lines when stderr is not a terminal. After the layers, an image of
 * more than 3 layers shows its squash step (`squashing 6 layers into one`, then `squashed …`).
 */

import type { ImagePullEventBody } from '../bus/events.ts';

const WIDTH = 30;

function mib(n: number): string {
  return `${(n / (1024 * 1024)).toFixed(1)} MiB`;
}

/**
 * Returns an `onEvent` handler that draws the pull's progress on `out`.
 *
 * @example
 * await resolveImage(ref, { stateDir, onEvent: pullProgress(process.stderr) });
 */
export function pullProgress(out: NodeJS.WriteStream): (e: ImagePullEventBody) => void {
  const done = new Map<string, number>();
  let total = 0;
  let layers = 0;
  let finished = 0;
  let lastDraw = 0;
  /** What the squash step is doing, after the layers: `squashing 6 layers`, then `squashed …`. */
  let squash = '';
  const draw = (force = false) => {
    const now = Date.now();
    if (!force && now - lastDraw < 100) return;
    lastDraw = now;
    const bytes = [...done.values()].reduce((a, b) => a + b, 0);
    const frac = total > 0 ? Math.min(1, bytes / total) : 0;
    const fill = Math.round(frac * WIDTH);
    const line = `[${'#'.repeat(fill)}${'-'.repeat(WIDTH - fill)}] ${(frac * 100).toFixed(0).padStart(3)}% ${mib(bytes)} / ${mib(total)}  layers ${finished}/${layers}${squash}`;
    if (out.isTTY) out.write(`\r${line}`);
    else if (force) out.write(`${line}\n`);
  };
  return (e) => {
    switch (e.type) {
      case 'image.pull.started':
        total = e.bytesTotal;
        layers = e.layers;
        finished = e.cachedLayers;
        out.write(`pulling ${e.image} (${e.layers} layers, ${e.cachedLayers} cached, ${mib(e.bytesTotal)})\n`);
        draw(true);
        break;
      case 'image.pull.progress':
        if (e.phase === 'squash') {
          squash = `  ${e.bytesDone < e.bytesTotal ? 'squashing' : 'squashed'} ${e.layers.length} layers into one`;
          draw(true);
          break;
        }
        if (e.phase === 'download') done.set(e.layer, e.bytesDone);
        if (e.phase === 'done') {
          finished++;
          done.set(e.layer, e.bytesTotal);
        }
        draw(e.phase === 'done');
        break;
      case 'image.pull.done':
        if (out.isTTY && !e.cached) out.write('\n');
        out.write(`${e.cached ? 'cached' : 'pulled'} ${e.image}@${e.digest} (${e.layers} layers, ${mib(e.bytes)} in ${(e.durationMs / 1000).toFixed(1)} s)\n`);
        break;
      case 'image.pull.failed':
        if (out.isTTY) out.write('\n');
        break;
    }
  };
}
