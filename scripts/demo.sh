#!/usr/bin/env bash
# `make demo`: the whole pipeline on the embedded model, on a CPU, then a chat turn beside the base model.
set -euo pipefail
cd "$(dirname "$0")/.."
C=.venv/bin/character
echo "== shipped constitutions"
$C constitution list
echo
echo "== character run configs/pirate-cpu.yaml  (prompts -> distill -> dpo -> introspect -> sft -> merge)"
$C run configs/pirate-cpu.yaml
echo
echo "== the trained model (no system prompt) beside the base model"
$C chat pirate-cpu --compare base -m "How do I boil an egg?" --max-tokens 80 --seed 1
echo
echo "== evaluation (first part): classifier, robustness under attacks, likelihood gain"
$C eval run pirate-cpu
