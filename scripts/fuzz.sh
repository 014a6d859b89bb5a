#!/usr/bin/env bash
# Long fuzz run of the frame decoder / agent client and the layer extractor (test/fuzz/).
# Usage: scripts/fuzz.sh [ms per property, default 600000]. A failure prints fast-check's
# counterexample and seed: add the counterexample to test/fuzz/corpus/ so every run replays
# it, and CORRAL_FUZZ_SEED=<seed> replays the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CORRAL_FUZZ_MS="${1:-${CORRAL_FUZZ_MS:-600000}}"
echo "fuzzing for ${CORRAL_FUZZ_MS} ms per property"
exec npx vitest run test/fuzz/ "${@:2}"
