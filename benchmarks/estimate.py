"""How close `character estimate` is: measure this machine's rates, estimate a recipe, run it, and print each
stage's estimate beside its actual seconds (markdown, for RESULTS.md).

    .venv/bin/python benchmarks/estimate.py [--set prompts.total=32 ...]

Runs in a fresh CHARACTER_HOME under /tmp (a run of the demo recipe with the overrides; default: a smaller one
than the demo's, so the check is not the data the factors were fitted on)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ["name=estimate-check", "prompts.total=32", "distill.sampling.max_tokens=64",
           "introspect.sampling.max_tokens=64", "introspect.interactions=4", "sft.epochs=1"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", nargs="+", default=DEFAULT)
    ap.add_argument("--eval", action="store_true", help="also run and compare the evaluation")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="estimate-"))
    os.environ["CHARACTER_HOME"] = str(home)
    sys.path.insert(0, str(ROOT))
    from character import log
    from character.estimate import estimate, measure
    from character.recipe import load_recipe
    from character.summary import stage_rows
    from character.runs import run_dir

    log.setup()  # the measurement's progress lines
    recipe = ROOT / "configs" / "pirate-cpu.yaml"
    cfg = load_recipe(recipe, args.set)
    rates = measure(cfg.models.student, cfg.dpo.backend)
    rows = estimate(cfg, rates)
    cmd = [sys.executable, "-m", "character.cli", "run", str(recipe), "--set", *args.set]
    subprocess.run(cmd, check=True, cwd=ROOT)
    if args.eval:
        subprocess.run([sys.executable, "-m", "character.cli", "eval", cfg.name], check=True, cwd=ROOT)
    actual = {r["stage"]: r["seconds"] for r in stage_rows(run_dir(cfg.name))}
    print(f"\nrates: generation {rates.generate_tps:.0f}, scoring {rates.score_tps:.0f}, training "
          f"{rates.train_tps:.0f} tokens/s; overrides: {' '.join(args.set)}\n")
    print("| stage | estimate (s) | actual (s) | actual / estimate |")
    print("|---|---|---|---|")
    for r in rows:
        a, e = actual.get(r["stage"]), r["estimate_s"]
        ratio = f"{a / e:.2f}" if a is not None and e else "-"
        print(f"| {r['stage']} | {e if e is not None else '-'} | {a if a is not None else '-'} | {ratio} |")
    est = sum(r["estimate_s"] or 0 for r in rows if r["stage"] != "eval")
    act = sum(actual.get(r["stage"]) or 0 for r in rows if r["stage"] != "eval")
    print(f"| pipeline (prompts to merge) | {est} | {act} | {act / est:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
