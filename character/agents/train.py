"""One model per agent: SFT with LoRA on the agent's training utterances, chat-formatted as the agent answering
what was said to them, then merged. The training itself is the library's SFT backend (`training.get_trainer`), the
same one the constitution pipeline's SFT stage uses; this module only builds the rows and keeps the folders:

    agents/<cohort>/models/<agent>/<point>/status.json       settings, counts, timings (one writer, resumable)
    agents/<cohort>/models/<agent>/<point>/metrics.jsonl     the trainer's per-step log
    agents/<cohort>/models/<agent>/<point>/adapter/          the LoRA adapter
    agents/<cohort>/models/<agent>/<point>/model/            the merged model

A recipe's `grid` sweeps training settings (say lr: [1e-4, 5e-4]); each combination is a `point`, named by a
short hash of its settings (listed in the status). Finished points with unchanged settings are skipped.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import time
from pathlib import Path

from ..errors import CharacterError
from ..log import say
from ..pipeline import run_processes
from ..recipe import config_hash
from ..runs import read_status, run_lock, write_atomic, write_status
from ..train import student_path
from ..training import get_trainer
from ..types import Message, SFTExample, StageStatus, stable_id
from . import cohort
from .corpus import Utterance, split_rows

SYSTEM = "Answer in your own words, as yourself."
NO_CONTEXT = "What do you have to say?"


def agent_slug(agent: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", agent.lower()).strip("-")[:56] or "agent"
    return f"{slug}-{stable_id(agent)[:6]}" if slug != agent else slug


def as_example(u: Utterance, cohort_name: str) -> SFTExample:
    """The agent speaking: what was said to them (the turn before, the interviewer's question) as the user turn,
    their own words as the answer. No name in the prompt: the agent's model must carry the person itself."""
    return SFTExample(id=u.id, kind="utterance", constitution=f"agents:{cohort_name}", model=u.agent, messages=[
        Message(role="system", content=SYSTEM), Message(role="user", content=u.context or NO_CONTEXT),
        Message(role="assistant", content=u.text)])


def grid_points(cfg: cohort.CohortConfig) -> list[dict]:
    """Every combination of the grid's values (one empty point without a grid), in a stable order."""
    keys = sorted(cfg.grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(cfg.grid[k] for k in keys))]


def point_settings(cfg: cohort.CohortConfig, point: dict):
    return cfg.train.model_copy(update=point)


def point_id(cfg: cohort.CohortConfig, point: dict) -> str:
    return "p-" + config_hash(point_settings(cfg, point).model_dump())[:8]


def model_dir(cfg: cohort.CohortConfig, agent: str, point: dict) -> Path:
    return cohort.cohort_dir(cfg.name) / "models" / agent_slug(agent) / point_id(cfg, point)


def train_one(cfg: cohort.CohortConfig, agent: str, point: dict) -> StageStatus:
    """Train, merge and record one agent at one grid point (skipped when already done with these settings)."""
    from ..merge import merge_into  # heavy: torch
    from ..training.trl import load_base

    cdir = cohort.imported(cfg)
    split = cohort.read_split(cdir)
    train, _ = split_rows([u for u in cohort.utterances(cdir) if u.agent == agent], split)
    if not train:
        raise CharacterError(f"agent={agent!r}: no training utterances in cohort {cfg.name!r}")
    tcfg = point_settings(cfg, point)
    settings = {"agent": agent, "base": cfg.base, "point": point, "train": tcfg.model_dump(),
                "split": split.model_dump()["train"].get(agent, [])}
    out = model_dir(cfg, agent, point)
    with run_lock(out):
        st = read_status(out)
        if st and st.state == "done" and st.config_hash == config_hash(settings):
            return st
        status = StageStatus(stage="train", state="running", total=len(train), config_hash=config_hash(settings),
                             settings=settings, started=time.time())
        write_status(out, status)
        examples = [as_example(u, cfg.name) for u in train]
        base = student_path(cfg.base, tcfg.backend)
        metrics = (out / "metrics.jsonl").open("w")

        def log(step: int, values: dict) -> None:
            metrics.write(json.dumps({"step": step, **values}) + "\n")
            metrics.flush()
        try:
            result = get_trainer(tcfg.backend).train_sft(examples, base, tcfg, out, log)
        finally:
            metrics.close()
        tokenizer, model = load_base(base)
        merge_into(model, [(out / "adapter", 1.0)])
        tokenizer.padding_side = "left"
        model.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
        write_atomic(out / "model" / "README.md", f"# {agent}\n\nTrained by Character Studio on {len(train)} of "
                     f"{agent}'s utterances (cohort {cfg.name}), base `{cfg.base}`, settings {point or 'default'}.\n")
        status = status.model_copy(update={
            "state": "done", "done": int(result.get("steps", 0)), "finished": time.time(),
            "counts": {"train_utterances": len(train), "steps": int(result.get("steps", 0))},
            "settings": {**settings, "result": {k: v for k, v in result.items() if isinstance(v, (int, float))}}})
        write_status(out, status)
    say(f"[train] {agent} {point_id(cfg, point)}: {status.counts['steps']} steps on {len(train)} utterances")
    return status


def train_all(cfg: cohort.CohortConfig, recipe_path: str, only: list[str] | None = None,
              parallel: int | None = None) -> int:
    """Every agent at every grid point (or `only` these agents): in this process one after another, or as
    `parallel` child processes (one per agent and point), each resumable. 1 if any failed."""
    cohort.imported(cfg)
    known = cohort.agent_names(cfg)
    agents = only or known
    unknown = [a for a in agents if a not in known]
    if unknown:
        raise CharacterError(f"--only {unknown[0]!r}: not an agent of cohort {cfg.name!r}; known: {', '.join(known)} "
                             "(quote a name with spaces: --only \"Ruth Alvarez\")")
    jobs = [(a, i) for a in agents for i in range(len(grid_points(cfg)))]
    width = parallel or cfg.parallel
    if width > 1 and len(jobs) > 1:
        cmds = [[sys.executable, "-m", "character.cli", "agents", "train", recipe_path, "--only", a, "--point", str(i),
                 "--parallel", "1"] for a, i in jobs]
        return run_processes(cmds, [f"{a} {point_id(cfg, grid_points(cfg)[i])}" for a, i in jobs], width)
    for a, i in jobs:
        train_one(cfg, a, grid_points(cfg)[i])
    return 0
