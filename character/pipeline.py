"""`character run RECIPE`: the stages in order, each skipped when already done with the same
settings, with a one-screen summary at the end.

    prompts -> distill -> dpo -> introspect -> sft -> merge       (runs/<name>/...)
A stage whose settings changed since it ran is reported and kept; `--restart` redoes it and
everything after it. Several recipes run in parallel as separate processes (`--parallel N`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from .config import STAGES, RecipeConfig, config_hash
from .errors import CharacterError
from .runs import read_status, run_dir as run_dir_for, write_atomic


def stage_hash(cfg: RecipeConfig, stage: str) -> str:
    if stage == "prompts":
        return config_hash(cfg.prompts)
    if stage == "distill":
        return config_hash({"distill": cfg.distill.model_dump(), "models": cfg.models.model_dump(),
                            "constitution": cfg.constitution})
    if stage in ("dpo", "sft"):
        return config_hash(getattr(cfg, stage))
    return config_hash(cfg.introspect if stage == "introspect" else cfg.merge)


def run_stage(cfg: RecipeConfig, rdir: Path, stage: str) -> dict:
    if stage == "prompts":
        from . import prompts
        return {"prompts": len(prompts.run(cfg, rdir))}
    if stage == "distill":
        from . import distill
        return distill.run(cfg, rdir)
    if stage in ("dpo", "sft"):
        from . import train
        return train.run(cfg, rdir, stage)
    if stage == "introspect":
        from . import introspect
        return introspect.run(cfg, rdir)
    from . import merge
    return merge.run(cfg, rdir)


def preflight(cfg: RecipeConfig, stages: list[str]) -> None:
    """Fail at once, before any work, when a key the recipe needs is missing."""
    from .config import env
    from .errors import MissingKeyError
    from .inference import parse_spec
    specs = [cfg.models.teacher, cfg.models.student] + ([cfg.models.judge] if "prompts" in stages else [])
    needs_tinker = any(parse_spec(s)[0] == "tinker" for s in specs) or any(
        getattr(cfg, k).backend == "tinker" for k in ("dpo", "sft") if k in stages)
    if needs_tinker and not env("TINKER_API_KEY"):
        raise MissingKeyError("TINKER_API_KEY is not set; this recipe uses Tinker (a tinker/ model or "
                              "backend: tinker); put the key in the environment or .env")


def run_recipe(cfg: RecipeConfig, stages: list[str] | None = None, restart: bool = False,
               say=print) -> dict:
    import yaml
    rdir = run_dir_for(cfg.name)
    unknown = [s for s in (stages or []) if s not in STAGES]
    if unknown:
        raise CharacterError(f"stages={unknown}: unknown; use some of {', '.join(STAGES)}")
    wanted = [s for s in STAGES if s in (stages or cfg.stages)]
    if not wanted:
        raise CharacterError("stages=[]: nothing to run; name at least one stage")
    preflight(cfg, wanted)
    if restart:
        for s in STAGES[STAGES.index(wanted[0]):]:
            shutil.rmtree(rdir / s, ignore_errors=True)
    rdir.mkdir(parents=True, exist_ok=True)
    write_atomic(rdir / "recipe.yaml", yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    results, timings = {}, {}
    for stage in wanted:
        st = read_status(rdir / stage)
        if st and st.state == "done":
            if st.config_hash != stage_hash(cfg, stage):
                say(f"[{stage}] settings changed since this stage ran; keeping it (pass --restart to redo it)")
            else:
                say(f"[{stage}] done already, skipped")
            results[stage] = {"skipped": True, "done": st.done}
            continue
        say(f"[{stage}] running ...")
        t = time.time()
        results[stage] = run_stage(cfg, rdir, stage)
        timings[stage] = time.time() - t
        say(f"[{stage}] finished in {timings[stage]:.0f}s")
    return {"run": str(rdir), "results": results, "timings": timings}


def summary(outcome: dict) -> str:
    from .report import run_summary
    return run_summary(Path(outcome["run"]), outcome.get("timings", {}))


def run_parallel(recipes: list[str], extra: list[str], parallel: int) -> int:
    """Each recipe in its own `character run` process, at most `parallel` at a time."""
    procs: list[tuple[str, subprocess.Popen]] = []
    pending = list(recipes)
    failed = 0
    while pending or procs:
        while pending and len(procs) < parallel:
            r = pending.pop(0)
            procs.append((r, subprocess.Popen([sys.executable, "-m", "character.cli", "run", r, *extra])))
        for r, p in list(procs):
            if p.poll() is not None:
                procs.remove((r, p))
                failed += p.returncode != 0
                print(f"{r}: {'ok' if p.returncode == 0 else f'failed ({p.returncode})'}")
        time.sleep(0.5)
    return 1 if failed else 0
