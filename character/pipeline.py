"""`character run RECIPE`: the stages in order, each skipped when already done with the same
settings and inputs, with a one-screen summary at the end.

    prompts -> distill -> dpo -> introspect -> sft -> merge       (runs/<name>/...)

Provenance: each stage's status.json records its own settings (and their hash) and the output id
of every upstream stage it consumed; a finished stage gets an output id of its own. A stage whose
settings or inputs differ from what the recipe now asks for is stale, and the run stops before it
with one line naming what changed and the fix (`--restart STAGE`, which redoes that stage and
everything after it). The whole command holds the run's writer lock. Several recipes run in
parallel as separate processes (`--parallel N`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from pydantic import BaseModel

from . import constitution as C
from . import distill, introspect, prompts, train
from .errors import CharacterError, MissingKeyError, StaleStageError
from .inference import parse_spec
from .log import say
from .recipe import STAGES, RecipeConfig, config_hash, public_recipe
from .runs import read_status, recorded, run_lock, write_atomic, write_status
from .runs import run_dir as run_dir_for
from .settings import ENV_REF, env, is_secret_option
from .summary import run_summary
from .train import extra_rows
from .types import PreferencePair, SFTExample, StageStatus, stable_id

UPSTREAM = {"prompts": (), "distill": ("prompts",), "dpo": ("distill",), "introspect": ("dpo",),
            "sft": ("introspect", "dpo"), "merge": ("dpo", "sft")}
# Backend options that change how requests are sent, not what comes back: not part of a stage's identity.
OPERATIONAL = {"max_concurrency", "timeout", "max_retries", "backoff_base", "backoff_cap", "batch_size"}


def _model(cfg: RecipeConfig, spec: str) -> dict:
    opts = {k: v for k, v in cfg.models.options.get(spec, {}).items()
            if k not in OPERATIONAL and not is_secret_option(k)}
    return {"spec": spec, **({"options": opts} if opts else {})}


def _has_questionless_traits(ref: str) -> bool:
    return any(not t.questions for t in C.load(ref).traits)


def constitution_fingerprint(ref: str, with_examples: bool = False) -> str:
    """Content hash of the constitution a recipe names (an edited file makes its stages stale); its voice
    examples count only `with_examples` (the distillation teacher reads them)."""
    return stable_id(C.fingerprint_data(C.load(ref), with_examples))


# Settings added after runs began recording their settings count only when set away from their default,
# so upgrading does not make every finished stage stale.
ADDED_LATER = {"precision": "auto", "extra_data": []}
DISTILL_ADDED_LATER = {"teacher_prompt": "full", "voice_examples": True, "guidance": 1.0, "best_of": 1,
                       "persona_filter": False}


def without_added_later(section, added: dict) -> dict:
    """A recipe section's settings, less those added later that still hold their defaults."""
    return {k: v for k, v in section.model_dump().items() if added.get(k, object()) != v}


def train_settings(tcfg) -> dict:
    return without_added_later(tcfg, ADDED_LATER)


def distill_settings(dcfg) -> dict:
    return without_added_later(dcfg, DISTILL_ADDED_LATER)


def stage_settings(cfg: RecipeConfig, stage: str) -> dict:
    """Everything a stage's output depends on besides its inputs (the upstream stages' outputs)."""
    m = cfg.models
    if stage == "prompts":
        s = {"prompts": cfg.prompts.model_dump(), "seed": cfg.seed, "student": _model(cfg, m.student),
             "constitution": constitution_fingerprint(cfg.constitution)}
        if cfg.prompts.mix.get("expanded", 0) > 0 or (cfg.prompts.mix.get("constitution", 0) > 0
                                                      and _has_questionless_traits(cfg.constitution)):
            s["teacher"] = _model(cfg, m.teacher)  # the teacher writes questions
            s["expansion"] = "batched"  # one call per round for all traits (seeded per round), since 3b5e58b
        return s
    if stage == "distill":
        return {"distill": distill_settings(cfg.distill), "seed": cfg.seed, "teacher": _model(cfg, m.teacher),
                "student": _model(cfg, m.student),
                "constitution": constitution_fingerprint(cfg.constitution, cfg.distill.voice_examples),
                "max_prompt_tokens": cfg.prompts.max_prompt_tokens}
    if stage in ("dpo", "sft"):
        s = {stage: train_settings(getattr(cfg, stage)), "student": _model(cfg, m.student)}
        if getattr(cfg, stage).extra_data:  # their content, not only their names
            s["extra_data"] = {p: file_fingerprint(p) for p in getattr(cfg, stage).extra_data}
        return s
    if stage == "introspect":
        return {"introspect": cfg.introspect.model_dump(), "seed": cfg.seed, "student": _model(cfg, m.student),
                "constitution": constitution_fingerprint(cfg.constitution)}
    return {"merge": cfg.merge.model_dump(), "student": _model(cfg, m.student)}


def file_fingerprint(path: str) -> str:
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else "missing"


def stage_hash(cfg: RecipeConfig, stage: str) -> str:
    return config_hash(stage_settings(cfg, stage))


def output_id(rdir: Path, stage: str) -> str:
    st = read_status(rdir / stage)
    return st.output if st and st.state == "done" else ""


def _flat(d: object, prefix: str = "") -> dict[str, object]:
    if isinstance(d, dict):
        out: dict[str, object] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def what_changed(old: dict, new: dict) -> str:
    a, b = _flat(old), _flat(new)
    diffs = [f"{k} {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(set(a) | set(b))
             if a.get(k) != b.get(k)]
    if not diffs:
        return "the same settings hash differently (recorded by another version)"
    return ", ".join(diffs[:3]) + (f" and {len(diffs) - 3} more" if len(diffs) > 3 else "")


def staleness(cfg: RecipeConfig, rdir: Path, stage: str) -> str | None:
    """Why the stage's saved records (finished or partial) do not belong to this recipe, or None."""
    st = read_status(rdir / stage)
    if st is None:
        return None
    if not st.settings:
        return "it was made by an earlier version that did not record its settings and inputs"
    if st.config_hash != stage_hash(cfg, stage):
        return f"settings changed since it ran: {what_changed(st.settings, stage_settings(cfg, stage))}"
    if st.state == "done":
        for up in UPSTREAM[stage]:
            if st.inputs.get(up) != output_id(rdir, up):
                return f"its input, the {up} stage, was redone or changed since it ran"
    return None


def legacy_hash(cfg: RecipeConfig, stage: str) -> str:
    """The settings hash the version before provenance recorded, for the same recipe."""
    if stage == "distill":
        return config_hash({"distill": distill_settings(cfg.distill), "models": cfg.models.model_dump(),
                            "constitution": cfg.constitution})
    return config_hash(train_settings(getattr(cfg, stage)) if stage in ("dpo", "sft") else getattr(cfg, stage))


def adopt_legacy(cfg: RecipeConfig, rdir: Path) -> list[str]:
    """Finished stages written before settings and inputs were recorded are adopted when their old
    settings hash matches this recipe (the check that version made), in pipeline order, so an upgrade
    does not force a rerun; the rest stay unrecorded and are reported stale."""
    adopted = []
    for stage in STAGES:
        st = read_status(rdir / stage)
        if not st or st.settings or st.state != "done":
            continue
        if st.config_hash != legacy_hash(cfg, stage) or any(not output_id(rdir, up) for up in UPSTREAM[stage]):
            break
        write_status(rdir / stage, st.model_copy(update={
            "config_hash": stage_hash(cfg, stage), "settings": stage_settings(cfg, stage),
            "inputs": {up: output_id(rdir, up) for up in UPSTREAM[stage]}}))
        finish_stage(rdir, stage)
        adopted.append(stage)
    return adopted


def check_run(cfg: RecipeConfig, rdir: Path, wanted: list[str], redo: str | None = None) -> None:
    """Refuse, before any work, a run that would continue past a stale stage or skip a missing input.
    `redo`: that stage and every stage after it are about to be made again (--restart)."""
    last = max(STAGES.index(s) for s in wanted)
    cut = STAGES.index(redo) if redo else len(STAGES)
    for stage in STAGES[:min(last + 1, cut)]:
        why = staleness(cfg, rdir, stage)
        if why:
            raise StaleStageError(f"run={cfg.name!r}: stage {stage} is stale ({why}); rerun with "
                                  f"--restart {stage} to redo it and every stage after it, or use another run name")
    for stage in wanted:
        for up in UPSTREAM[stage]:
            if up in wanted:
                continue
            st = read_status(rdir / up) if STAGES.index(up) < cut else None
            if not st or st.state != "done":
                state = st.state + (f": {st.error}" if st and st.error else "") if st else "not run"
                raise CharacterError(f"stage {stage} needs the {up} stage done first (it is {state}); "
                                     f"run it: character run RECIPE --stages {up} {stage}")


def prepare_stage(cfg: RecipeConfig, rdir: Path, stage: str) -> None:
    """Write the provenance before the stage starts, so even partial records say what made them."""
    st = read_status(rdir / stage) or StageStatus(stage=stage)
    write_status(rdir / stage, st.model_copy(update={
        "state": "running", "config_hash": stage_hash(cfg, stage), "settings": stage_settings(cfg, stage),
        "inputs": {up: output_id(rdir, up) for up in UPSTREAM[stage]}, "error": None, "finished": None,
        "writer": os.getpid()}))


def finish_stage(rdir: Path, stage: str) -> None:
    st = read_status(rdir / stage)
    if st and st.state == "done":
        write_status(rdir / stage, st.model_copy(update={
            "output": stable_id(stage, st.config_hash, st.inputs, st.started, st.finished)}))


def run_stage(cfg: RecipeConfig, rdir: Path, stage: str) -> None:
    """Run one stage; what it made is in its folder, and its StageStatus (read_status) says how it went."""
    if stage == "prompts":
        prompts.run(cfg, rdir)
    elif stage == "distill":
        distill.run(cfg, rdir)
    elif stage in ("dpo", "sft"):
        train.run(cfg, rdir, stage)
    elif stage == "introspect":
        introspect.run(cfg, rdir)
    else:
        from . import merge  # heavy: torch (loaded only when the merge runs)
        merge.run(cfg, rdir)


def preflight(cfg: RecipeConfig, stages: list[str]) -> None:
    """Fail at once, before any work, when a key the recipe needs is missing."""
    specs = [cfg.models.teacher, cfg.models.student] + ([cfg.models.judge] if "prompts" in stages else [])
    needs_tinker = any(parse_spec(s)[0] == "tinker" for s in specs) or any(
        getattr(cfg, k).backend == "tinker" for k in ("dpo", "sft") if k in stages)
    if needs_tinker and not env("TINKER_API_KEY"):
        raise MissingKeyError("TINKER_API_KEY is not set; this recipe uses Tinker (a tinker/ model or "
                              "backend: tinker); put the key in the environment or .env")
    if any(getattr(cfg, k).backend == "together" for k in ("dpo", "sft") if k in stages) and not env("TOGETHER_API_KEY"):
        raise MissingKeyError("TOGETHER_API_KEY is not set; this recipe trains on Together (backend: together); "
                              "put the key in the environment or .env")
    for kind, record in (("dpo", PreferencePair), ("sft", SFTExample)):
        if kind in stages:
            extra_rows(getattr(cfg, kind).extra_data, record, kind)  # readable rows, before anything is redone
    for spec in specs:  # a key option written as ${VARIABLE} whose variable is empty
        for name, value in (cfg.models.options.get(spec) or {}).items():
            m = ENV_REF.match(value.strip()) if is_secret_option(name) and isinstance(value, str) else None
            if m and not env(m.group(1)):
                raise MissingKeyError(f"{m.group(1)} is not set; models.options[{spec!r}].{name} reads it; put the key "
                                      "in the environment or .env")


def wanted_stages(cfg: RecipeConfig, stages: list[str] | None) -> list[str]:
    unknown = [s for s in (stages or []) if s not in STAGES]
    if unknown:
        raise CharacterError(f"stages={unknown}: unknown; use some of {', '.join(STAGES)}")
    wanted = [s for s in STAGES if s in (stages or cfg.stages)]
    if not wanted:
        raise CharacterError("stages=[]: nothing to run; name at least one stage")
    return wanted


class RunOutcome(BaseModel):
    """What `run_recipe` did: per stage, its status record (counts, filters, warnings; read back by the summary,
    the report and the studio from status.json) and the seconds it took in this call (absent: skipped)."""
    run: Path
    stages: dict[str, StageStatus]
    timings: dict[str, float]


def run_recipe(cfg: RecipeConfig, stages: list[str] | None = None, restart: bool | str = False,
               say=say) -> RunOutcome:
    """Run the wanted stages under the run's writer lock. `restart`: True redoes the first wanted
    stage and everything after it; a stage name redoes that stage and everything after it."""
    rdir = run_dir_for(cfg.name)
    wanted = wanted_stages(cfg, stages)
    if isinstance(restart, str):
        if restart not in STAGES:
            raise CharacterError(f"restart={restart!r}: not a stage; use one of {', '.join(STAGES)}")
        wanted = sorted(set(wanted) | {restart}, key=STAGES.index)
    preflight(cfg, wanted)
    with run_lock(rdir):
        first = restart if isinstance(restart, str) else (wanted[0] if restart else None)
        adopted = adopt_legacy(cfg, rdir)
        if adopted:
            say(f"recorded the settings of {', '.join(adopted)} (made by an earlier version with this recipe's settings)")
        check_run(cfg, rdir, wanted, redo=first)  # before anything is deleted
        if first:
            for s in STAGES[STAGES.index(first):]:
                shutil.rmtree(rdir / s, ignore_errors=True)
        write_atomic(rdir / "recipe.yaml", yaml.safe_dump(public_recipe(cfg), sort_keys=False))
        results: dict[str, StageStatus] = {}
        timings: dict[str, float] = {}
        for stage in wanted:
            st = read_status(rdir / stage)
            if st and st.state == "done" and not staleness(cfg, rdir, stage):
                say(f"[{stage}] done already, skipped")
                results[stage] = st
                continue
            say(f"[{stage}] running ...")
            t = time.time()
            prepare_stage(cfg, rdir, stage)
            try:
                with recorded(rdir / stage, stage):
                    run_stage(cfg, rdir, stage)
            except KeyboardInterrupt:
                say(f"[{stage}] stopped; run the same command to resume")
                raise
            except CharacterError:
                say(f"[{stage}] failed (recorded in {rdir / stage / 'status.json'})")
                raise
            finish_stage(rdir, stage)
            timings[stage] = time.time() - t
            results[stage] = read_status(rdir / stage)
            say(f"[{stage}] finished in {timings[stage]:.0f}s")
    return RunOutcome(run=rdir, stages=results, timings=timings)


def summary(outcome: RunOutcome) -> str:
    return run_summary(outcome.run, outcome.timings)


def check_distinct(names: list[str], paths: list[str], what: str, fix: str) -> None:
    """Two configs that write one folder would be two writers: refuse before starting any."""
    seen: dict[str, str] = {}
    for name, path in zip(names, paths, strict=True):
        if name in seen:
            raise CharacterError(f"name={name!r}: both {seen[name]} and {path} write {what} {name!r}; {fix}")
        seen[name] = path


def check_distinct_runs(cfgs: list[RecipeConfig], paths: list[str]) -> None:
    check_distinct([c.name for c in cfgs], paths, "run", "give each recipe its own name")


def run_parallel(recipes: list[str], extra: list[str], parallel: int) -> int:
    """Each recipe in its own `character run` process, at most `parallel` at a time."""
    return run_processes([[sys.executable, "-m", "character.cli", "run", r, *extra] for r in recipes], recipes,
                         parallel)


def run_processes(commands: list[list[str]], labels: list[str], parallel: int) -> int:
    """Run the commands as child processes, at most `parallel` at a time; 1 if any failed. Ctrl-C stops the
    children too (each records `stopped` and keeps its finished work)."""
    procs: list[tuple[str, subprocess.Popen]] = []
    pending = list(zip(labels, commands, strict=True))
    # each child gets its share of the cores for torch's math threads (unless the user chose a number): two
    # processes with one thread each outrun two with two threads each on a 2-core machine (benchmarks/RESULTS.md)
    threads = str(max(1, (os.cpu_count() or 1) // max(1, min(parallel, len(commands)))))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or threads}
    failed = 0
    try:
        while pending or procs:
            while pending and len(procs) < parallel:
                label, cmd = pending.pop(0)
                procs.append((label, subprocess.Popen(cmd, env=env)))
            for r, p in list(procs):
                if p.poll() is not None:
                    procs.remove((r, p))
                    failed += p.returncode != 0
                    print(f"{r}: {'ok' if p.returncode == 0 else f'failed ({p.returncode})'}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        for _, p in procs:
            p.send_signal(signal.SIGINT)
        for _, p in procs:
            p.wait()
        raise
    return 1 if failed else 0
