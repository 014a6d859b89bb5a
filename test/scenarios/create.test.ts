// The seed page's create examples as standalone user processes (see runScenario.ts): every
// builder option, build() -> JSON -> create, replace, pull policy never.
import { scenarioCases } from './scenarioCases.ts';

scenarioCases('create scenarios, each a plain node process', ['create-options', 'config-json', 'replace', 'pull-never']);
