#!/usr/bin/env bash
# `make demo`: everything this version can do, on the embedded model, on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
C=.venv/bin/character
echo "== 1. shipped constitutions"
$C constitution list
$C constitution validate
echo "== 2. the embedded model in character (pirate constitution as system prompt)"
$C chat --constitution pirate -m "How do I boil an egg?" --max-tokens 80 --seed 1
echo "== 3. the same question with no constitution"
$C chat -m "How do I boil an egg?" --max-tokens 80 --seed 1
echo "== 4. drafting a constitution with the embedded model (a 135M model often cannot; it says why)"
$C constitution draft "a grumpy lighthouse keeper who loves astronomy" --out data/drafts/lighthouse-keeper.yaml \
   --force --traits 3 --questions 3 || echo "(draft failed as reported above; use --model openai/<model> for a usable draft)"
