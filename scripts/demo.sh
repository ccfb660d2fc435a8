#!/usr/bin/env bash
# `make demo`: the whole pipeline on the embedded model, on a CPU, a chat turn beside the base model,
# the evaluation, and the report card (data/runs/pirate-cpu/report.html).
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
echo "== evaluation: classifier, likelihood, robustness under attacks, revealed preferences, judges"
$C eval pirate-cpu
echo
echo "== the report card"
$C report pirate-cpu
