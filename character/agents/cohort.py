"""A cohort: the recipe naming the agents, their corpus and the motions, and its folder under
CHARACTER_HOME/agents/<name>/. `import_corpus` reads and checks everything first and writes only then:

    agents/<name>/data/utterances.jsonl   every agent's utterances (Utterance records)
    agents/<name>/data/motions.jsonl      the motions and recorded votes (Motion records)
    agents/<name>/data/split.json         which sources each agent holds out (written once, kept after)
    agents/<name>/data/status.json        counts per agent, the recipe's corpus settings
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import CharacterError
from ..recipe import RecipeError, TrainConfig, pydantic_problems, read_yaml_mapping
from ..runs import (
    character_home,
    check_slug,
    read_jsonl,
    read_record,
    read_status,
    run_lock,
    write_jsonl,
    write_record,
    write_status,
)
from ..types import StageStatus
from .corpus import Motion, Split, Utterance, make_split, read_corpus, read_motions, split_rows


class CohortConfig(BaseModel):
    """`configs/council-cpu.yaml` is the example; relative paths are read from the recipe's folder."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="The cohort's folder name under CHARACTER_HOME/agents/.")
    base: str = Field("embedded", description="The model every agent is trained from (a model spec).")
    agents: list[str] = Field(default_factory=list, description="The agents' names as the corpus spells them; "
                              "needed for transcripts (other speakers are context). Empty: every agent in the "
                              "JSONL/CSV files.")
    corpus: list[str] = Field(min_length=1, description="JSONL/CSV files and transcript folders.")
    motions: str | None = Field(None, description="CSV of motions with one yes/no column per agent.")
    heldout: float = Field(0.25, gt=0, lt=1, description="Share of each agent's sources held out for evaluation.")
    seed: int = 0
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(
        rank=8, alpha=16, lr=5e-4, epochs=2, batch_size=4, max_length=256, warmup_ratio=0.0),
        description="SFT settings for every agent (the constitution pipeline's sft settings).")
    grid: dict[str, list] = Field(default_factory=dict, description="Training settings to sweep, e.g. "
                                  "{lr: [1e-4, 5e-4], rank: [8, 16]}; each combination is one model per agent.")
    parallel: int = Field(1, ge=1, description="Agents and grid points trained at once, as separate processes.")

    @field_validator("train")
    @classmethod
    def _local(cls, v: TrainConfig) -> TrainConfig:
        if v.backend != "trl" or v.num_processes != 1:
            raise ValueError(f"train.backend={v.backend!r}, num_processes={v.num_processes}: agents train with the local "
                             "trl backend in one process for now (several agents at once: parallel)")
        return v

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list]) -> dict[str, list]:
        for key, values in v.items():
            if key not in TrainConfig.model_fields or key in ("backend", "extra_data", "num_processes"):
                raise ValueError(f"grid.{key}: not a training setting to sweep; use rank, alpha, lr, epochs, ...")
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid.{key}={values!r}: give a list of values")
            for x in values:
                TrainConfig.model_validate({key: x})  # each value valid alone
        return v

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        try:
            return check_slug(v, "name")
        except CharacterError as e:  # listed with the recipe's other problems
            raise ValueError(str(e).split(": ", 1)[-1]) from None


def load_config(path: str | Path) -> CohortConfig:
    p = Path(path)
    data = read_yaml_mapping(path, "recipe", "an agents recipe such as configs/council-cpu.yaml",
                             "fields such as name, agents, corpus, motions")
    for key in ("corpus",):
        if isinstance(data.get(key), list):
            data[key] = [str((p.parent / x).resolve()) if isinstance(x, str) and not Path(x).is_absolute() else x
                         for x in data[key]]
    if isinstance(data.get("motions"), str) and not Path(data["motions"]).is_absolute():
        data["motions"] = str((p.parent / data["motions"]).resolve())
    try:
        return CohortConfig.model_validate(data)
    except ValidationError as e:
        problems = pydantic_problems(e)
        raise RecipeError(f"agents recipe {p.name}: {len(problems)} problem(s): " + " | ".join(problems)) from None


def cohort_dir(name: str) -> Path:
    return character_home() / "agents" / check_slug(name, "name")


def read_split(cdir: Path) -> Split | None:
    return read_record(cdir / "data" / "split.json", Split)


def agent_names(cfg: CohortConfig) -> list[str]:
    """The recipe's agents, or (where it names none) the agents the import found."""
    if cfg.agents:
        return list(cfg.agents)
    st = read_status(cohort_dir(cfg.name) / "data")
    return list(st.settings.get("agents", [])) if st else []


def imported(cfg: CohortConfig) -> Path:
    """The cohort's folder, once its corpus is imported (else one line saying what to run)."""
    cdir = cohort_dir(cfg.name)
    if read_split(cdir) is None:
        raise CharacterError(f"cohort={cfg.name!r}: no imported corpus; run: character agents import RECIPE")
    return cdir


def utterances(cdir: Path) -> list[Utterance]:
    return read_jsonl(cdir / "data" / "utterances.jsonl", Utterance)


def train_held(cdir: Path) -> tuple[list[Utterance], list[Utterance]]:
    """The imported utterances as (train, held out), by the recorded split."""
    return split_rows(utterances(cdir), read_split(cdir))


def motions(cdir: Path) -> list[Motion]:
    p = cdir / "data" / "motions.jsonl"
    return read_jsonl(p, Motion) if p.exists() else []


def import_corpus(cfg: CohortConfig) -> StageStatus:
    """Read, check and split the corpus, then write the data folder (nothing is written on an error). The split
    is recorded once: a re-import keeps every source where it was and places only new ones."""
    rows = read_corpus(cfg.corpus, cfg.agents or None)
    agents = cfg.agents or sorted({u.agent for u in rows})
    missing = [a for a in agents if not any(u.agent == a for u in rows)]
    if missing:
        raise CharacterError(f"agents={missing}: no utterance of {missing[0]!r} in the corpus; check the spelling "
                             "against the transcripts' speaker labels")
    table = read_motions(cfg.motions, agents) if cfg.motions else []
    cdir = cohort_dir(cfg.name)
    with run_lock(cdir):
        before = read_split(cdir)
        if before and (before.seed, before.heldout_share) != (cfg.seed, cfg.heldout):
            raise CharacterError(f"heldout={cfg.heldout}, seed={cfg.seed}: cohort {cfg.name!r} was split with heldout="
                                 f"{before.heldout_share}, seed={before.seed} and its models trained on that split; "
                                 f"keep those values, or remove {cdir} to start the cohort again")
        split = make_split(rows, cfg.heldout, cfg.seed, before)
        train, held = split_rows(rows, split)
        counts = {}
        for a in agents:
            counts[a] = {"utterances": sum(u.agent == a for u in rows), "train": sum(u.agent == a for u in train),
                         "heldout": sum(u.agent == a for u in held),
                         "words": sum(len(u.text.split()) for u in rows if u.agent == a),
                         "votes": sum(a in m.votes for m in table)}
        data = cdir / "data"
        write_jsonl(data / "utterances.jsonl", rows)
        write_jsonl(data / "motions.jsonl", table)
        write_record(data / "split.json", split)
        status = StageStatus(stage="data", state="done", done=len(rows), total=len(rows),
                             counts={"utterances": len(rows), "motions": len(table), "agents": len(agents)},
                             settings={"corpus": cfg.corpus, "motions": cfg.motions, "agents": agents,
                                       "heldout": cfg.heldout, "seed": cfg.seed, "per_agent": counts},
                             started=time.time(), finished=time.time())
        write_status(data, status)
    return status


def format_import(status: StageStatus) -> str:
    per = status.settings["per_agent"]
    lines = [f"{'agent':<24} {'utterances':>10} {'words':>7} {'train':>6} {'held out':>8} {'votes':>6}"]
    for a, c in per.items():
        lines.append(f"{a:<24} {c['utterances']:>10} {c['words']:>7} {c['train']:>6} {c['heldout']:>8} {c['votes']:>6}")
    lines.append(f"{status.counts['utterances']} utterances, {status.counts['motions']} motions")
    return "\n".join(lines)
