// Exec output streams with flow control as a standalone user process (see runScenario.ts).
import { scenarioCases } from './scenarioCases.ts';

scenarioCases('stream scenarios, each a plain node process', ['streams']);
