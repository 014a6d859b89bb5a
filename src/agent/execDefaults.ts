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
