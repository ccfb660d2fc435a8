#!/usr/bin/env bash
# Wall time and peak memory of the whole cohort pipeline (`make demo-agents`) from an empty folder, then the
# report card's tables:
#     bash benchmarks/agents.sh [configs/council-cpu.yaml]
# -> /usr/bin/time's numbers and agents/<cohort>/report.md; copy the figures into benchmarks/RESULTS.md
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE="${1:-configs/council-cpu.yaml}"
export CHARACTER_HOME="${CHARACTER_HOME:-$(mktemp -d)}"
export CHARACTER_MODELS="${CHARACTER_MODELS:-$PWD/data/models}"
mkdir -p "$CHARACTER_HOME"
echo "CHARACTER_HOME=$CHARACTER_HOME"
/usr/bin/time -v .venv/bin/character agents run "$RECIPE" > "$CHARACTER_HOME/agents-run.log" \
  2> >(tee "$CHARACTER_HOME/agents-run.err" | grep -E "Elapsed|Maximum resident|skipped|\[train\]|\[profiles\]" >&2)
cat "$CHARACTER_HOME"/agents/*/report.md
