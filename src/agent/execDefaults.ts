/**
 * The environment defaults an exec gets on top of the image's and the sandbox's.
 */

/**
 * Adds HOME and TERM when nothing set them: HOME=/root for root (for another user the agent
 * sets the user's home from /etc/passwd), TERM=xterm-256color on a tty.
 *
 * @example
 * execEnvDefaults({ PATH: '/bin' }, { user: 'nobody', tty: true }); // { PATH: '/bin', TERM: 'xterm-256color' }
 */
export function execEnvDefaults(env: Readonly<Record<string, string>>, options: { user?: string | undefined; tty: boolean }): Record<string, string> {
  const out: Record<string, string> = { ...env };
  const root = options.user === undefined || options.user === 'root' || options.user === '0' || options.user.startsWith('0:') || options.user.startsWith('root:');
  if (out.HOME === undefined && root) out.HOME = '/root';
  if (out.TERM === undefined && options.tty) out.TERM = 'xterm-256color';
  return out;
}

const ROOT_USERS = new Set(['', 'root', '0', '0:0', 'root:root', 'root:0', '0:root']);

/**
 * The user an exec runs as: the one it asks for, else the image config's `User` — unless that
 * is root, which the agent runs as anyway (and an agent older than protocol 3 cannot resolve
 * users at all). Undefined means root.
 *
 * @example
 * execUser(undefined, '0:0'); // undefined
 * execUser(undefined, 'app'); // 'app'
 */
export function execUser(requested: string | undefined, imageUser: string | undefined): string | undefined {
  if (requested !== undefined) return requested;
  return imageUser === undefined || ROOT_USERS.has(imageUser) ? undefined : imageUser;
}
