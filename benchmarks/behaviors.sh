#!/usr/bin/env bash
# Wall time, peak memory and per-stage seconds of a shipped behaviour config from an empty folder:
#     bash benchmarks/behaviors.sh [configs/behaviors/pirate-hostile.yaml]
# -> /usr/bin/time's numbers, then the stages' seconds (timings.json); copy them into benchmarks/RESULTS.md
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${1:-configs/behaviors/pirate-hostile.yaml}"
export CHARACTER_HOME="$(mktemp -d)"
export CHARACTER_MODELS="${CHARACTER_MODELS:-$PWD/data/models}"
/usr/bin/time -v .venv/bin/character behaviors run "$CONFIG" 2> >(grep -E "Elapsed|Maximum resident" >&2)
cat "$CHARACTER_HOME"/behaviors/*/timings.json
