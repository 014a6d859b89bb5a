// File watches (sb.fs().watch) as a standalone user process (see runScenario.ts).
import { scenarioCases } from './scenarioCases.ts';

scenarioCases('file watch scenario, a plain node process', ['watch']);
