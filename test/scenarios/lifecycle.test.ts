// The seed page's lifecycle examples as standalone user processes (see runScenario.ts): stop,
// start, kill, pause, resume, drain, detach, list/get/remove, detached + reconnect, graceful
// stop with fallback, max duration and idle timeout; cancellation and disposal; the VM's jail.
import { scenarioCases } from './scenarioCases.ts';

scenarioCases('lifecycle scenarios, each a plain node process', ['lifecycle', 'detached', 'graceful-stop', 'policies', 'cancel', 'portable', 'background', 'jail']);
