/** The command-line options of `corral node` (apart from src/cli/node.ts, which loads the NATS client). */
export const NODE_OPTIONS = {
  nats: { type: 'string' },
  name: { type: 'string' },
  label: { type: 'string', multiple: true },
  user: { type: 'string' },
  password: { type: 'string' },
  'nkey-seed': { type: 'string' },
  creds: { type: 'string' },
  'max-sandboxes': { type: 'string' },
  memory: { type: 'string' },
  heartbeat: { type: 'string' },
  replicas: { type: 'string' },
  'tls-ca': { type: 'string' },
  'tls-cert': { type: 'string' },
  'tls-key': { type: 'string' },
} as const;
