#!/usr/bin/env bash
# Wall time and peak memory of the demo pipeline from an empty run folder (setup excluded):
#     bash benchmarks/demo.sh        -> prints /usr/bin/time's numbers; copy them into benchmarks/RESULTS.md
set -euo pipefail
cd "$(dirname "$0")/.."
export CHARACTER_HOME="$(mktemp -d)"
export CHARACTER_MODELS="${CHARACTER_MODELS:-$PWD/data/models}"
/usr/bin/time -v .venv/bin/character run configs/pirate-cpu.yaml 2> >(grep -E "Elapsed|Maximum resident" >&2)
