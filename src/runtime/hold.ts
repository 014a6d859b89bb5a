/**
 * Holding the event loop while a call is pending.
 *
 * Workers, MessagePorts and sockets of idle sandboxes are unreferenced (an idle attached
 * sandbox must not keep its process alive), and LMDB's write completions hold no handle
 * either. A promise awaited on nothing but those lets Node end a plain script with exit
 * code 13 ("unsettled top-level await"). Every public call that waits on such a thing runs
 * inside {@link holding}, so that it keeps the process alive until it settles.
 */

let holders = 0;
let timer: NodeJS.Timeout | undefined;

function acquire(): void {
  if (holders++ === 0) {
    // One long timer for every holder: it never fires, it only counts as a handle.
    timer ??= setInterval(() => {}, 1 << 30);
    timer.ref();
  }
}

function releaseOne(): void {
  if (--holders === 0) timer?.unref();
}

/**
 * Runs `fn`, keeping the process alive until the promise it returns settles.
 *
 * @example
 * await holding(() => store.putSandbox(rec));
 */
export async function holding<T>(fn: () => Promise<T>): Promise<T> {
  acquire();
  try {
    return await fn();
  } finally {
    releaseOne();
  }
}
